// Progress output on stderr: ProgressBar (a bar redrawn in place on a
// terminal, printed every 10 % otherwise: logs, CI) and StatusLine (a free-form
// line that other output scrolls above). Not thread-safe.
#ifndef LLAMAPRO_CLIENT_PROGRESS_H_
#define LLAMAPRO_CLIENT_PROGRESS_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/string_view.h"

namespace llamapro::cli {

class ProgressBar {
 public:
  // `label` prefixes the line ("expand"); `items` names what is counted
  // ("tensors", "files"); `enabled` false prints nothing.
  ProgressBar(std::string label, std::string items, bool enabled);
  // `extra` is appended to the line (e.g. document and token counts). With
  // no byte counts (both 0) the fraction and rate are of items.
  void Update(int64_t items_done, int64_t items_total, uint64_t bytes_done, uint64_t bytes_total,
              double seconds, const std::string& extra = "");
  // Ends the line (on a terminal) so later output starts clean.
  void Finish();

 private:
  std::string label_;
  std::string items_;
  bool enabled_;
  bool tty_;
  int last_decile_ = -1;
  bool drawn_ = false;
};

// One status line (e.g. a remote job's step, loss and ETA) on stderr, kept
// below other output. On a terminal Show() redraws it in place (cut to the
// terminal's width); otherwise each Show() prints it as a plain line.
class StatusLine {
 public:
  // `enabled` false: Show() prints nothing; PrintAbove() still prints.
  explicit StatusLine(bool enabled);
  void Show(absl::string_view text);
  // Prints `line` and a newline to `out` (flushed): on a terminal, the
  // status line is erased first and redrawn below it.
  void PrintAbove(std::FILE* out, absl::string_view line);
  // Ends the status line (on a terminal) so later output starts clean.
  void Finish();

 private:
  void Erase();
  void Draw();

  bool enabled_;
  bool tty_;
  std::string text_;
  bool drawn_ = false;
};

}  // namespace llamapro::cli

#endif  // LLAMAPRO_CLIENT_PROGRESS_H_
