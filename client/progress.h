// A progress line on stderr: redrawn in place on a terminal, printed every
// 10 % otherwise (logs, CI). Not thread-safe.
#ifndef LLAMAPRO_CLIENT_PROGRESS_H_
#define LLAMAPRO_CLIENT_PROGRESS_H_

#include <cstdint>
#include <string>

namespace llamapro::cli {

class ProgressBar {
 public:
  // `label` prefixes the line ("expand"); `items` names what is counted
  // ("tensors", "files"); `enabled` false prints nothing.
  ProgressBar(std::string label, std::string items, bool enabled);
  // `extra` is appended to the line (e.g. document and token counts).
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

}  // namespace llamapro::cli

#endif  // LLAMAPRO_CLIENT_PROGRESS_H_
