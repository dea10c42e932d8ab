#!/usr/bin/env python3
"""Writes about SIZE_MB of synthetic, realistic-looking text, one document per
line: English-like prose with a Zipfian word distribution, Python and C++
snippets (escaped newlines as spaces), numbers, and some German, Russian and
Chinese. Deterministic for a seed. Usage: gen_text.py OUT SIZE_MB [SEED]"""
import random
import sys

out_path, size_mb = sys.argv[1], float(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
rng = random.Random(seed)

syllables = ["ka", "lo", "re", "tin", "mar", "so", "ven", "di", "qua", "ber", "ex", "pro", "ta",
             "ri", "mo", "nel", "gra", "fi", "sto", "un", "de", "pli", "cor", "ma", "ti", "on"]
vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                for _ in range(80000)})
common = ("the of and to in is that for it as was with be by on not he this are or his from "
          "at which but have an they you were her she there been one all we their has would "
          "when if so no will can more who what up out about into than them only other").split()
words = common + vocab
weights = [1.0 / (i + 1) ** 1.07 for i in range(len(words))]
cum = []
total = 0.0
for w in weights:
    total += w
    cum.append(total)

code_lines = [
    "def {n}(x, y=None):  return [v * 2 for v in range(x) if v % 3 == 0]",
    "for (int i = 0; i < {n}; ++i) {{ total += values[i] * weights[i]; }}",
    "import numpy as np; a = np.zeros(({n}, 64), dtype=np.float32)",
    "class {N}(nn.Module):  def forward(self, x): return self.proj(x).relu()",
    "    if {n} > 0 and not done:        raise ValueError('bad {n}')",
]
foreign = ["Die Erweiterung der Blöcke verändert die Funktion des Modells nicht.",
           "Расширение блоков не меняет функцию модели.",
           "块扩展不会改变模型的函数，只训练新的块。",
           "数学の証明と定理、そしてコードの学習。"]

target = int(size_mb * 1e6)
written = 0
with open(out_path, "w", encoding="utf-8") as out:
    while written < target:
        kind = rng.random()
        if kind < 0.80:
            n = rng.randint(20, 400)
            line = " ".join(rng.choices(words, cum_weights=cum, k=n))
            line = line[0].upper() + line[1:] + "."
        elif kind < 0.95:
            parts = []
            for _ in range(rng.randint(3, 30)):
                t = rng.choice(code_lines)
                name = rng.choice(vocab)
                parts.append(t.format(n=name, N=name.capitalize()))
            line = "    ".join(parts)
        else:
            line = " ".join(rng.choice(foreign) for _ in range(rng.randint(2, 20)))
            line += " " + str(rng.randint(0, 10**9))
        out.write(line + "\n")
        written += len(line.encode("utf-8")) + 1
