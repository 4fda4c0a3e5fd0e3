// Test doubles for the unit tier: an in-memory BlobReader with fault injection,
// and a builder for consistent manifests over in-memory shards.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/manifest.h"

namespace shelbyfs::test {

/// Thread-safe in-memory objects. `corrupt_next` flips a byte in that many
/// upcoming answers, `corrupt_at` in that many answers at an offset;
/// `fail_with` makes every read fail; `hold` (or `hold_if`, for chosen
/// offsets) keeps answers pending until release() or fail_held() so tests can
/// line up concurrent readers and prefetches. Set the public fields only while
/// no read or prefetch is running.
class FakeReader final : public BlobReader {
public:
    std::map<std::string, std::string> objects;
    int corrupt_next = 0;
    std::map<std::uint64_t, int> corrupt_at;  ///< offset -> answers to corrupt
    std::optional<Error> fail_with;
    int throw_next = 0;  ///< read_range throws std::bad_alloc this many times

    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override {
        std::lock_guard lock(mutex_);
        ++requests_;
        ++requests_at_[offset];
        if (throw_next > 0) {
            --throw_next;
            throw std::bad_alloc();
        }
        std::promise<Result<std::string>> p;
        auto f = p.get_future();
        Result<std::string> r = answer_locked(location, offset, length);
        if (hold_ || (hold_if_ && hold_if_(offset))) {
            held_.push_back({std::move(p), std::move(r)});
            held_cv_.notify_all();
        } else {
            p.set_value(std::move(r));
        }
        return f;
    }
    int requests() const {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    /// Requests made for the range starting at `offset`.
    int requests_at(std::uint64_t offset) const {
        std::lock_guard lock(mutex_);
        auto it = requests_at_.find(offset);
        return it == requests_at_.end() ? 0 : it->second;
    }
    /// The highest offset requested, or -1.
    std::int64_t highest_offset() const {
        std::lock_guard lock(mutex_);
        return requests_at_.empty() ? -1 : static_cast<std::int64_t>(requests_at_.rbegin()->first);
    }
    void hold() {
        std::lock_guard lock(mutex_);
        hold_ = true;
    }
    /// Hold only the requests whose offset satisfies `pred`.
    void hold_if(std::function<bool(std::uint64_t offset)> pred) {
        std::lock_guard lock(mutex_);
        hold_if_ = std::move(pred);
    }
    std::size_t held() const {
        std::lock_guard lock(mutex_);
        return held_.size();
    }
    /// Wait (at most 10 s) until at least `n` requests are held.
    bool wait_held(std::size_t n) {
        std::unique_lock lock(mutex_);
        return held_cv_.wait_for(lock, std::chrono::seconds(10), [&] { return held_.size() >= n; });
    }
    /// Stop holding and answer the held requests.
    void release() {
        std::lock_guard lock(mutex_);
        hold_ = false;
        hold_if_ = nullptr;
        for (auto& [p, r] : held_) p.set_value(std::move(r));
        held_.clear();
    }
    /// Answer the requests held so far; go on holding as before.
    void answer_held() {
        std::lock_guard lock(mutex_);
        for (auto& [p, r] : held_) p.set_value(std::move(r));
        held_.clear();
    }
    /// Stop holding and fail the held requests with `error`.
    void fail_held(const Error& error) {
        std::lock_guard lock(mutex_);
        hold_ = false;
        hold_if_ = nullptr;
        for (auto& held : held_) held.first.set_value(error);
        held_.clear();
    }

private:
    Result<std::string> answer_locked(const std::string& location, std::uint64_t offset, std::uint64_t length) {
        if (fail_with) return *fail_with;
        auto it = objects.find(location);
        if (it == objects.end()) return make_error(Errc::NotFound, location + ": 404");
        if (offset + length > it->second.size()) return make_error(Errc::HttpStatus, location + ": 416");
        std::string data = it->second.substr(offset, length);
        auto corrupt = corrupt_at.find(offset);
        if (corrupt != corrupt_at.end() && corrupt->second > 0 && !data.empty()) {
            --corrupt->second;
            data[0] = static_cast<char>(data[0] ^ 0x5a);
        } else if (corrupt_next > 0 && !data.empty()) {
            --corrupt_next;
            data[0] = static_cast<char>(data[0] ^ 0x5a);
        }
        return data;
    }
    mutable std::mutex mutex_;
    std::condition_variable held_cv_;
    int requests_ = 0;
    std::map<std::uint64_t, int> requests_at_;
    bool hold_ = false;
    std::function<bool(std::uint64_t)> hold_if_;
    std::vector<std::pair<std::promise<Result<std::string>>, Result<std::string>>> held_;
};

/// Answers with `inner`'s answer after a pseudo-random delay of up to
/// `most`, on a thread of its own (as a network would, out of order).
class DelayedReader final : public BlobReader {
public:
    DelayedReader(FakeReader& inner, std::chrono::microseconds most) : inner_(inner), most_(most) {}
    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override {
        auto answer = std::make_shared<std::future<Result<std::string>>>(inner_.read_range(location, offset, length));
        std::chrono::microseconds delay;
        {
            std::lock_guard lock(mutex_);
            state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
            delay = std::chrono::microseconds((state_ >> 33) % (static_cast<std::uint64_t>(most_.count()) + 1));
        }
        return std::async(std::launch::async, [answer, delay] {
            std::this_thread::sleep_for(delay);
            return answer->get();
        });
    }

private:
    FakeReader& inner_;
    std::chrono::microseconds most_;
    std::mutex mutex_;
    std::uint64_t state_ = 1;
};

/// Deterministic pseudo-random bytes.
inline std::string pattern(std::size_t size, unsigned seed) {
    std::string s(size, '\0');
    std::uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    for (auto& c : s) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c = static_cast<char>(x);
    }
    return s;
}

/// Fill shard hashes and block hashes of `m` from the bytes in `reader.objects`
/// (keyed by each shard's location).
inline void seal(Manifest& m, const FakeReader& reader) {
    for (auto& shard : m.shards) {
        const std::string& bytes = reader.objects.at(shard.location);
        shard.size = bytes.size();
        shard.hash = ContentHash::of(bytes);
        shard.blocks.clear();
        for (std::uint64_t off = 0; off < bytes.size(); off += m.block_size)
            shard.blocks.push_back(ContentHash::of(std::string_view(bytes).substr(off, m.block_size)));
    }
    for (auto& s : m.samples) {
        const std::string& bytes = reader.objects.at(m.shards[s.shard].location);
        s.hash = ContentHash::of(std::string_view(bytes).substr(s.offset, s.size));
    }
}

}  // namespace shelbyfs::test
