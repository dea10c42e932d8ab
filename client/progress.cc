#include "client/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"
#include "base/units.h"

namespace llamapro::cli {

ProgressBar::ProgressBar(std::string label, std::string items, bool enabled)
    : label_(std::move(label)),
      items_(std::move(items)),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) == 1) {}

void ProgressBar::Update(int64_t items_done, int64_t items_total, uint64_t bytes_done,
                         uint64_t bytes_total, double seconds, const std::string& extra) {
  if (!enabled_) return;
  // Without byte counts (bytes_total 0), progress is counted in items.
  const bool by_items = bytes_total == 0 && bytes_done == 0 && items_total > 0;
  const double done = by_items ? static_cast<double>(items_done) : static_cast<double>(bytes_done);
  const double total =
      by_items ? static_cast<double>(items_total) : static_cast<double>(bytes_total);
  const double fraction = total > 0 ? done / total : 1.0;
  const double rate = seconds > 0 ? done / seconds : 0.0;
  const double eta = rate > 0 ? (total - done) / rate : 0.0;
  std::string stats = by_items ? absl::StrFormat("%3.0f%% %d/%d %s %.2f/s", fraction * 100,
                                                 items_done, items_total, items_, rate)
                               : absl::StrFormat("%3.0f%% %d/%d %s %s/%s %s/s", fraction * 100,
                                                 items_done, items_total, items_,
                                                 FormatBytes(bytes_done), FormatBytes(bytes_total),
                                                 FormatBytes(static_cast<uint64_t>(rate)));
  if (!extra.empty()) stats += " " + extra;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(stderr, "\r%s [%s] %s eta %.0fs \x1b[K", label_.c_str(), bar.c_str(),
                 stats.c_str(), eta);
    drawn_ = true;
  } else {
    const int decile = static_cast<int>(fraction * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s: %s (%.1fs)\n", label_.c_str(), stats.c_str(), seconds);
  }
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (enabled_ && tty_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

StatusLine::StatusLine(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO) == 1) {}

void StatusLine::Show(absl::string_view text) {
  if (!enabled_) return;
  text_ = std::string(text);
  if (tty_) {
    Draw();
  } else {
    std::fprintf(stderr, "%s\n", text_.c_str());
    std::fflush(stderr);
  }
}

void StatusLine::PrintAbove(std::FILE* out, absl::string_view line) {
  const bool redraw = drawn_;
  Erase();
  std::fprintf(out, "%.*s\n", static_cast<int>(line.size()), line.data());
  std::fflush(out);
  if (redraw) Draw();
}

void StatusLine::Finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
  text_.clear();
}

void StatusLine::Erase() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\x1b[K");
  std::fflush(stderr);
  drawn_ = false;
}

void StatusLine::Draw() {
  // A line longer than the terminal wraps, and "\r" then redraws only its
  // last row: cut it to the width instead.
  size_t width = 0;
  winsize size{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 1) width = size.ws_col - 1;
  const int shown = static_cast<int>(width > 0 && text_.size() > width ? width : text_.size());
  std::fprintf(stderr, "\r%.*s\x1b[K", shown, text_.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace llamapro::cli
