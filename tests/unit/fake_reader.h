// Test doubles for the unit tier: an in-memory BlobReader with fault injection,
// and a builder for consistent manifests over in-memory shards.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/manifest.h"

namespace shelbyfs::test {

/// Thread-safe in-memory objects. `corrupt_next` flips a byte in that many
/// upcoming answers; `fail_with` makes every read fail; `hold` keeps answers
/// pending until release() so tests can line up concurrent readers.
class FakeReader final : public BlobReader {
public:
    std::map<std::string, std::string> objects;
    int corrupt_next = 0;
    std::optional<Error> fail_with;
    int throw_next = 0;  ///< read_range throws std::bad_alloc this many times

    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override {
        std::lock_guard lock(mutex_);
        ++requests_;
        if (throw_next > 0) {
            --throw_next;
            throw std::bad_alloc();
        }
        std::promise<Result<std::string>> p;
        auto f = p.get_future();
        Result<std::string> r = answer_locked(location, offset, length);
        if (hold_) held_.push_back({std::move(p), std::move(r)});
        else p.set_value(std::move(r));
        return f;
    }
    int requests() const {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    void hold() {
        std::lock_guard lock(mutex_);
        hold_ = true;
    }
    void release() {
        std::lock_guard lock(mutex_);
        hold_ = false;
        for (auto& [p, r] : held_) p.set_value(std::move(r));
        held_.clear();
    }

private:
    Result<std::string> answer_locked(const std::string& location, std::uint64_t offset, std::uint64_t length) {
        if (fail_with) return *fail_with;
        auto it = objects.find(location);
        if (it == objects.end()) return make_error(Errc::NotFound, location + ": 404");
        if (offset + length > it->second.size()) return make_error(Errc::HttpStatus, location + ": 416");
        std::string data = it->second.substr(offset, length);
        if (corrupt_next > 0 && !data.empty()) {
            --corrupt_next;
            data[0] = static_cast<char>(data[0] ^ 0x5a);
        }
        return data;
    }
    mutable std::mutex mutex_;
    int requests_ = 0;
    bool hold_ = false;
    std::vector<std::pair<std::promise<Result<std::string>>, Result<std::string>>> held_;
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
