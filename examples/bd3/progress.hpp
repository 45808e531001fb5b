#pragma once
// Progress on stderr, shared by the long-running commands (train, eval, sample, eval-gen,
// tokenizer train): redrawn in place on a terminal, else one line every 5% (a log file
// gets a bounded number of lines whatever the job's length); nothing under --quiet.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace bd3::cli {

inline std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const auto t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m{:02}s", t / 3600, (t / 60) % 60, t % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

class Progress {
 public:
  using Clock = std::chrono::steady_clock;

  // `log_after_seconds`: when stderr is not a terminal, no line before the job has run
  // this long, so that a short job in a script leaves stderr empty.
  Progress(std::string label, int64_t total, bool quiet, double log_after_seconds = 0)
      : label_(std::move(label)),
        total_(std::max<int64_t>(total, 1)),
        tty_(::isatty(2) == 1),
        quiet_(quiet),
        log_after_(log_after_seconds),
        start_(Clock::now()) {}

  bool quiet() const { return quiet_; }
  bool terminal() const { return tty_; }

  // `eta_seconds` < 0: estimated from the elapsed time and the fraction done.
  void update(int64_t done, const std::string& detail, double eta_seconds = -1) {
    if (quiet_) return;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    if (eta_seconds < 0)
      eta_seconds = done > 0 ? elapsed / double(done) * double(total_ - done) : -1;
    const double pct = 100.0 * double(done) / double(total_);
    const std::string sep = detail.empty() ? "" : " ";
    if (tty_) {
      if (done < total_ && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now, drawn_ = true;
      constexpr int width = 24;
      const int filled = int(std::min(1.0, double(done) / double(total_)) * width);
      std::string bar(size_t(filled), '=');
      if (filled < width) bar += '>' + std::string(size_t(width - filled - 1), ' ');
      fmt::print(stderr, "\r{} {}/{} [{}] {:5.1f}%{}{} ETA {}\033[K", label_, done, total_, bar,
                 pct, sep, detail, format_duration(eta_seconds));
      std::fflush(stderr);
    } else {
      if (elapsed < log_after_) return;
      const int64_t bucket = int64_t(pct / 5.0);
      if (bucket == last_bucket_ && done < total_) return;
      if (done >= total_ && last_bucket_ == 20) return;
      last_bucket_ = done >= total_ ? 20 : bucket;
      fmt::print(stderr, "{} {}/{} ({:.0f}%){}{} ETA {}\n", label_, done, total_, pct, sep, detail,
                 format_duration(eta_seconds));
    }
  }
  void message(const std::string& line) {
    if (quiet_) return;
    if (tty_ && drawn_) fmt::print(stderr, "\r\033[K");
    fmt::print(stderr, "{}\n", line);
    drawn_ = false;
  }
  void set_total(int64_t total) { total_ = std::max<int64_t>(total, 1); }
  // Ends the redrawn line (keeping it) on a terminal.
  void finish() {
    if (!quiet_ && tty_ && drawn_) fmt::print(stderr, "\n");
    drawn_ = false;
  }
  // Erases the redrawn line on a terminal (when what follows replaces it).
  void clear() {
    if (!quiet_ && tty_ && drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_, quiet_;
  double log_after_;
  Clock::time_point start_;
  bool drawn_ = false;
  int64_t last_bucket_ = -1;
  Clock::time_point last_draw_{};
};

}  // namespace bd3::cli
