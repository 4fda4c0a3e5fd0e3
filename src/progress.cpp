// The progress line shared by pack, push and verify.
#include "shelbyfs/progress.h"

#include <unistd.h>

#include <cstdio>

#include "shelbyfs/units.h"

namespace shelbyfs {

bool progress_enabled(Progress mode) {
    return mode == Progress::Always || (mode == Progress::Auto && ::isatty(STDERR_FILENO) == 1);
}

ProgressLine::ProgressLine(bool enabled, std::string label, std::string items, std::uint64_t total_items,
                           std::uint64_t total_bytes)
    : enabled_(enabled), label_(std::move(label)), items_(std::move(items)), total_items_(total_items),
      total_bytes_(total_bytes) {}

ProgressLine::~ProgressLine() { finish(); }

void ProgressLine::add_bytes(std::uint64_t n) {
    std::lock_guard lock(mutex_);
    bytes_ += n;
    tick_locked();
}

void ProgressLine::add_item() {
    std::lock_guard lock(mutex_);
    ++done_items_;
    tick_locked();
}

void ProgressLine::finish() {
    std::lock_guard lock(mutex_);
    if (!enabled_) return;
    draw_locked(Clock::now());
    std::fputc('\n', stderr);
    std::fflush(stderr);
    enabled_ = false;
}

void ProgressLine::tick_locked() {
    // Four redraws a second read smoothly without costing measurable time.
    if (!enabled_) return;
    const auto now = Clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(250)) return;
    draw_locked(now);
}

void ProgressLine::draw_locked(Clock::time_point now) {
    last_draw_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(bytes_) / (1024.0 * 1024.0) / seconds : 0.0;
    std::fprintf(stderr, "\r\033[K%s: %llu/%llu %s, %s/%s, %.1f MiB/s", label_.c_str(),
                 static_cast<unsigned long long>(done_items_), static_cast<unsigned long long>(total_items_),
                 items_.c_str(), format_size(bytes_).c_str(), format_size(total_bytes_).c_str(), rate);
    std::fflush(stderr);
}

}  // namespace shelbyfs
