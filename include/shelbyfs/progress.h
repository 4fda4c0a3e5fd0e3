// A one-line progress display on stderr ("pushing: 3/10 shards, 1.2 GiB/4 GiB,
// 85.0 MiB/s"), for pack, push and verify.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace shelbyfs {

enum class Progress { Auto, Never, Always };

/// True if `mode` asks for a progress line (Auto: when stderr is a terminal).
bool progress_enabled(Progress mode);

/// Thread-safe. Redrawn at most four times a second; finish() (or the
/// destructor) draws the final state and ends the line.
class ProgressLine {
public:
    ProgressLine(bool enabled, std::string label, std::string items, std::uint64_t total_items,
                 std::uint64_t total_bytes);
    ~ProgressLine();
    ProgressLine(const ProgressLine&) = delete;
    ProgressLine& operator=(const ProgressLine&) = delete;

    void add_bytes(std::uint64_t n);
    void add_item();
    void finish();

private:
    using Clock = std::chrono::steady_clock;
    void tick_locked();
    void draw_locked(Clock::time_point now);

    std::mutex mutex_;
    bool enabled_;
    std::string label_;
    std::string items_;
    std::uint64_t total_items_;
    std::uint64_t total_bytes_;
    std::uint64_t done_items_ = 0;
    std::uint64_t bytes_ = 0;
    Clock::time_point start_ = Clock::now();
    Clock::time_point last_draw_ = start_;
};

}  // namespace shelbyfs
