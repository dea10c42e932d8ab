#!/usr/bin/env python3
"""GPU training-throughput baseline for bench/gpu_train_bench (docs/perf.md).

The model gpu_train_bench trains, in PyTorch: transformers' LlamaForCausalLM in
bf16 on the GPU with attn_implementation="sdpa", random weights; every
parameter frozen (requires_grad=False) except those of the --trainable blocks;
torch.optim.AdamW (fused where available; lr 1e-4, betas (0.9, 0.95), weight
decay 0.1) on the trainable ones; clip_grad_norm_ 1.0; random token ids. One
optimizer step = forward + backward of --micro-batch sequences of --seq tokens
(mean cross-entropy over every position, as the engine's), clip, AdamW step,
synchronize. --warmup steps, then --steps timed ones; tokens/s from the median.

Same tokens per step as the engine: on an out-of-memory error the micro-batch
is halved (to a divisor) with gradient accumulation to the same tokens per
step; at micro-batch 1, activation checkpointing (HF's, whole blocks) is
switched on instead. Either is said in "notes". With --recompute full,
checkpointing is on from the start (the engine recomputes whole blocks then).

Without transformers (not expected on the GPU machine) a plain-PyTorch LLaMA
of the same shapes is used and "notes" says so.

Prints progress, then one JSON line last: ok, tokens_per_s, step_ms,
peak_mem_bytes (torch.cuda.max_memory_allocated), peak_reserved_bytes,
micro_batch, grad_accum, notes, versions (or ok=false and error).

--device cpu runs the same loop on the CPU (a smoke test of this script with
tiny shapes, not a baseline).
"""
import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
import traceback

RESULT = {"ok": False, "notes": "", "versions": ""}


def emit(**fields):
    RESULT.update(fields)
    print(json.dumps(RESULT), flush=True)


def on_device(torch, device):
    """Creates tensors on `device` (torch >= 2.0); a no-op scope before that."""
    return device if hasattr(device, "__enter__") else contextlib.nullcontext()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=0, help="0: hidden / heads")
    ap.add_argument("--rms-norm-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--trainable", default="4,9,14,19,24,29,34,39",
                    help="comma-separated trainable block indices")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--recompute", choices=["none", "attention", "full"], default="none")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for a smoke test")
    return ap.parse_args()


class PlainLlama:
    """A LLaMA of the same shapes in plain PyTorch (only when transformers is missing)."""

    @staticmethod
    def build(cfg, torch):
        import torch.utils.checkpoint  # noqa: F401 - not imported by `import torch` before 2.0
        nn, F = torch.nn, torch.nn.functional
        hd = cfg.head_dim or cfg.hidden // cfg.heads
        sdpa = getattr(F, "scaled_dot_product_attention", None)

        class RMSNorm(nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(cfg.hidden))

            def forward(self, x):
                var = x.float().pow(2).mean(-1, keepdim=True)
                return (x.float() * torch.rsqrt(var + cfg.rms_norm_eps)).to(x.dtype) * self.weight

        def rope(x, cos, sin):  # HF rotate-half
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            return x * cos + torch.cat((-x2, x1), dim=-1) * sin

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.input_layernorm, self.post_attention_layernorm = RMSNorm(), RMSNorm()
                self.q_proj = nn.Linear(cfg.hidden, cfg.heads * hd, bias=False)
                self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=False)
                self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=False)
                self.o_proj = nn.Linear(cfg.heads * hd, cfg.hidden, bias=False)
                self.gate_proj = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
                self.up_proj = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
                self.down_proj = nn.Linear(cfg.ffn, cfg.hidden, bias=False)

            def forward(self, x, cos, sin):
                b, t, _ = x.shape
                h = self.input_layernorm(x)
                q = rope(self.q_proj(h).view(b, t, cfg.heads, hd).transpose(1, 2), cos, sin)
                k = rope(self.k_proj(h).view(b, t, cfg.kv_heads, hd).transpose(1, 2), cos, sin)
                v = self.v_proj(h).view(b, t, cfg.kv_heads, hd).transpose(1, 2)
                rep = cfg.heads // cfg.kv_heads
                if rep > 1:
                    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                if sdpa is not None:
                    a = sdpa(q, k, v, is_causal=True)
                else:  # torch < 2.0 (smoke tests on the development machine)
                    s = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
                    mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                    a = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
                x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, cfg.heads * hd))
                h = self.post_attention_layernorm(x)
                return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
                self.layers = nn.ModuleList(Block() for _ in range(cfg.layers))
                self.norm = RMSNorm()

        class ForCausalLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = Model()
                self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
                self.checkpointing = False

            def gradient_checkpointing_enable(self, **_):
                self.checkpointing = True

            def forward(self, input_ids):
                t = input_ids.shape[1]
                inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=input_ids.device)
                                                .float() / hd))
                freqs = torch.outer(torch.arange(t, device=input_ids.device).float(), inv)
                emb = torch.cat((freqs, freqs), dim=-1)
                dtype = self.lm_head.weight.dtype
                cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
                x = self.model.embed_tokens(input_ids)
                for layer in self.model.layers:
                    if self.checkpointing and any(p.requires_grad for p in layer.parameters()):
                        x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin,
                                                              use_reentrant=False)
                    else:
                        x = layer(x, cos, sin)
                return self.lm_head(self.model.norm(x))

        return ForCausalLM()


def build_model(cfg, torch, device, dtype):
    """(model, logits_of(model, ids), description)."""
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        RESULT["notes"] += f"transformers not importable ({e}): plain-PyTorch LLaMA used; "
        with on_device(torch, device):
            model = PlainLlama.build(cfg, torch)
        return model.to(device=device, dtype=dtype), (lambda m, ids: m(ids)), "plain PyTorch LLaMA"

    RESULT["versions"] += f" transformers {transformers.__version__}"
    kwargs = dict(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                  num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.seq,
                  rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, use_cache=False)
    if cfg.head_dim and cfg.head_dim != cfg.hidden // cfg.heads:
        kwargs["head_dim"] = cfg.head_dim
    if cfg.rope_theta != 10000.0:  # LLaMA's default; transformers 5 moved the key
        kwargs["rope_theta"] = cfg.rope_theta
    hf_config = LlamaConfig(**kwargs)
    attn = "sdpa" if device.type == "cuda" else "eager"
    model = None
    # Built on the device directly in bf16: no host copy, and the weight init
    # runs as a few GPU kernels. transformers 5 says dtype=, 4.x torch_dtype=.
    for dtype_key in ("dtype", "torch_dtype"):
        try:
            with on_device(torch, device):
                model = LlamaForCausalLM._from_config(
                    hf_config, attn_implementation=attn, **{dtype_key: dtype})
            break
        except TypeError:
            continue
    if model is None:
        hf_config._attn_implementation = attn
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with on_device(torch, device):
                model = LlamaForCausalLM(hf_config)
        finally:
            torch.set_default_dtype(previous)
    # Only where the build did not already give bf16: .to() would also cast
    # the rotary embedding's fp32 inv_freq buffer.
    if any(p.dtype != dtype or p.device.type != device.type for p in model.parameters()):
        model = model.to(device=device, dtype=dtype)
    impl = getattr(model.config, "_attn_implementation", "?")
    if device.type == "cuda" and impl != "sdpa":
        RESULT["notes"] += f"attention implementation is {impl}, not sdpa; "
    return model, (lambda m, ids: m(input_ids=ids).logits), f"transformers LlamaForCausalLM ({impl})"


def is_oom(e, torch):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def run(cfg):
    import torch
    import torch.nn.functional as F

    RESULT["versions"] = f"torch {torch.__version__}"
    device = torch.device(cfg.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        if not torch.cuda.is_available():
            return emit(error="torch.cuda.is_available() is False")
        torch.cuda.set_device(device)
        RESULT["versions"] += f" cuda {torch.version.cuda}, {torch.cuda.get_device_name(device)}"
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16
    trainable = [int(i) for i in cfg.trainable.split(",") if i != ""]

    t0 = time.perf_counter()
    model, logits_of, description = build_model(cfg, torch, device, dtype)
    model.train()
    model.requires_grad_(False)
    for i in trainable:
        model.model.layers[i].requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    if on_cuda:
        torch.cuda.synchronize(device)
    print(f"{description}: {n_all / 1e9:.3f} B parameters, {n_train / 1e9:.3f} B trainable "
          f"(blocks {cfg.trainable}), built on {device} in {time.perf_counter() - t0:.1f} s",
          flush=True)

    gen = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, cfg.vocab, (cfg.micro_batch, cfg.seq + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def make_optimizer():
        kw = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        if on_cuda:
            try:
                return torch.optim.AdamW(params, fused=True, **kw), "fused"
            except (TypeError, RuntimeError):
                pass
        try:
            return torch.optim.AdamW(params, foreach=True, **kw), "foreach"
        except TypeError:
            return torch.optim.AdamW(params, **kw), "for-loop"

    def attempt(micro, checkpointing):
        accum = cfg.micro_batch // micro
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer, kind = make_optimizer()
        times = []
        losses = []
        for step in range(cfg.warmup + cfg.steps):
            start = time.perf_counter()
            total = 0.0
            for a in range(accum):
                rows = slice(a * micro, (a + 1) * micro)
                logits = logits_of(model, inputs[rows])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       targets[rows].reshape(-1)) / accum
                loss.backward()
                total += loss.detach()
                del logits, loss
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            losses.append(float(total))
            if step >= cfg.warmup:
                times.append(seconds)
            print(f"step {step + 1}{' (warm-up)' if step < cfg.warmup else ''}: "
                  f"{seconds * 1e3:8.1f} ms, loss {losses[-1]:.4f}, grad norm {float(norm):.4f}",
                  flush=True)
        return times, losses, kind, accum

    # Same tokens per step whatever fits: smaller micro-batches (divisors of
    # the asked one) with accumulation, then checkpointing at each.
    divisors = [d for d in range(cfg.micro_batch, 0, -1) if cfg.micro_batch % d == 0]
    plans = [(d, cfg.recompute == "full") for d in divisors]
    if cfg.recompute != "full":
        plans += [(d, True) for d in divisors]
    for micro, checkpointing in plans:
        oom = False
        try:
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times, losses, kind, accum = attempt(micro, checkpointing)
        except Exception as e:  # noqa: BLE001 - OOM types differ between versions
            if not is_oom(e, torch):
                raise
            oom = True
            print(f"out of memory at micro-batch {micro}"
                  f"{' with checkpointing' if checkpointing else ''}; trying less", flush=True)
            RESULT["notes"] += (f"OOM at micro-batch {micro}"
                                f"{' with checkpointing' if checkpointing else ''}; ")
        if oom:
            # Outside the except block: its traceback kept the failed step's
            # tensors (and optimizer state) alive.
            for p in params:
                p.grad = None
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
            continue
        med = statistics.median(times)
        if accum > 1:
            RESULT["notes"] += (f"micro-batch {micro} x {accum} accumulation steps "
                                f"(same {cfg.micro_batch * cfg.seq} tokens per step); ")
        if checkpointing:
            RESULT["notes"] += "activation checkpointing (whole trainable blocks) on; "
        RESULT["notes"] += (f"AdamW {kind}; bf16 weights, grads and AdamW state (no fp32 "
                            f"masters); loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        if not all(math.isfinite(x) for x in losses):
            RESULT["notes"] += "; loss not finite"
        return emit(ok=True,
                    tokens_per_s=round(cfg.micro_batch * cfg.seq / med, 1),
                    step_ms=round(med * 1e3, 2),
                    peak_mem_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else 0,
                    peak_reserved_bytes=(int(torch.cuda.max_memory_reserved(device))
                                         if on_cuda else 0),
                    micro_batch=micro, grad_accum=accum, checkpointing=checkpointing,
                    model=description)
    return emit(error="out of memory even at micro-batch 1 with checkpointing")


def main():
    cfg = parse_args()
    try:
        run(cfg)
    except Exception as e:  # noqa: BLE001 - the caller reads the JSON line
        traceback.print_exc()
        emit(ok=False, error=f"{type(e).__name__}: {e}".replace("\n", " ")[:500])
        sys.exit(1)


if __name__ == "__main__":
    main()
