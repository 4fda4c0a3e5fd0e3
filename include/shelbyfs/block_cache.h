// BlockCache: an in-memory LRU of verified blocks under a byte budget.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace shelbyfs {

/// Identifies a block: an object (a shard) and the block's index within it.
struct BlockKey {
    std::uint32_t object = 0;
    std::uint64_t index = 0;
    friend bool operator==(const BlockKey&, const BlockKey&) = default;
};

struct BlockKeyHash {
    std::size_t operator()(const BlockKey& k) const noexcept {
        return std::hash<std::uint64_t>{}(k.index * 0x9E3779B97F4A7C15ull ^ k.object);
    }
};

/// Immutable block bytes. Readers hold a BlockPtr, so eviction never frees
/// bytes that are still being copied out.
using BlockPtr = std::shared_ptr<const std::string>;

/// A piece of a read served from memory without a copy: `data` stays valid
/// while `owner` (a cached block, or a buffer made for this read) is held.
struct ReadSlice {
    BlockPtr owner;
    const char* data = nullptr;
    std::size_t size = 0;
};
using ReadSlices = std::vector<ReadSlice>;

/// Bytes in `slices`.
std::size_t slices_size(const ReadSlices& slices);
/// Copy `slices` one after another into `buffer`; returns the byte count.
std::size_t copy_slices(const ReadSlices& slices, char* buffer);

/// Thread-safe LRU cache. Only verified blocks are inserted (the Fetcher's
/// job). The budget counts bytes held by the cache; a block larger than the
/// whole budget is not cached at all. Eviction drops the cache's reference
/// only; outstanding BlockPtrs stay valid.
class BlockCache {
public:
    explicit BlockCache(std::uint64_t budget_bytes) : budget_(budget_bytes) {}

    /// The block, marked most recently used, or nullptr.
    BlockPtr get(const BlockKey& key);
    /// Whether the block is cached; neither counted nor marked used.
    bool contains(const BlockKey& key) const;
    /// The block, marked most recently used and counted as a hit, or nullptr,
    /// not counted as a miss: for a caller that fetches nothing when it misses.
    BlockPtr get_if_cached(const BlockKey& key);
    /// Insert (or replace) and evict least-recently-used blocks over budget.
    void insert(const BlockKey& key, BlockPtr block);

    struct Stats {
        std::uint64_t hits = 0;
        std::uint64_t misses = 0;
        std::uint64_t evictions = 0;
        std::uint64_t bytes = 0;
        std::uint64_t blocks = 0;
    };
    Stats stats() const;
    std::uint64_t budget() const { return budget_; }

private:
    using Lru = std::list<std::pair<BlockKey, BlockPtr>>;
    void evict_locked();

    const std::uint64_t budget_;
    mutable std::mutex mutex_;  // leaf lock: nothing else is taken while it is held
    Lru lru_;                   // front = most recently used
    std::unordered_map<BlockKey, Lru::iterator, BlockKeyHash> index_;
    Stats stats_;
};

}  // namespace shelbyfs
