// Fetcher: cache miss -> ranged read -> verify against the manifest hash -> insert.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/block_cache.h"
#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

/// An immutable object read in blocks: a shard or a checkpoint.
struct ObjectSpec {
    std::string name;      ///< for messages ("shard-000001.tar")
    std::string location;  ///< resolved path or URL
    std::uint64_t size = 0;
    std::uint64_t block_size = 0;
    std::vector<ContentHash> blocks;  ///< expected hash of each block
};

struct FetcherOptions {
    /// Fetches of one block whose bytes fail verification, before giving up.
    int integrity_attempts = 3;
};

/// Thread-safe. Serves reads of objects from the BlockCache, fetching missing
/// blocks through the BlobReader. Concurrent misses on one block share one
/// request (single-flight). A block is verified before it is cached or
/// returned; a block that keeps failing verification gives Errc::Integrity,
/// and the log names the object and byte range. Never holds a lock across I/O.
class Fetcher {
public:
    Fetcher(BlobReader& reader, BlockCache& cache, std::vector<ObjectSpec> objects, FetcherOptions options = {});

    /// Copy up to `size` bytes at `offset` of object `object` into `buffer`.
    /// Returns the byte count: short only at the object's end (0 past it).
    Result<std::size_t> read(std::uint32_t object, std::uint64_t offset, char* buffer, std::size_t size);

    /// Register another object (a checkpoint published while mounted) and
    /// return its index. Specs are never removed; references stay valid.
    std::uint32_t add_object(ObjectSpec spec);
    const ObjectSpec& object(std::uint32_t index) const;
    std::size_t object_count() const;

    struct Stats {
        std::uint64_t fetches = 0;        ///< block fetches started (misses that led)
        std::uint64_t joined = 0;         ///< misses that joined an in-flight fetch
        std::uint64_t integrity_failures = 0;
        std::uint64_t bytes_fetched = 0;
    };
    Stats stats() const;

private:
    using SharedBlock = std::shared_future<Result<BlockPtr>>;
    struct Slot {
        BlockKey key;
        BlockPtr ready;                        // cache hit
        SharedBlock pending;                   // joined or led fetch
        std::promise<Result<BlockPtr>>* lead = nullptr;  // set when this caller leads
        std::future<Result<std::string>> first_attempt;
    };
    /// Resolve a fetch this caller leads and remove it from inflight_.
    void publish(Slot& slot, const Result<BlockPtr>& result) noexcept;
    Slot acquire(const BlockKey& key);
    Result<BlockPtr> complete(Slot& slot);
    Result<BlockPtr> verify_or_refetch(const BlockKey& key, std::future<Result<std::string>> first);
    /// The spec of `index`, or null if there is none.
    const ObjectSpec* find(std::uint32_t index) const;
    static std::uint64_t block_offset(const ObjectSpec& o, const BlockKey& key);
    static std::uint64_t block_length(const ObjectSpec& o, const BlockKey& key);

    BlobReader& reader_;
    BlockCache& cache_;
    mutable std::shared_mutex objects_mutex_;  // guards the vector, not the (immutable) specs
    std::vector<std::unique_ptr<const ObjectSpec>> objects_;
    const FetcherOptions options_;

    std::mutex inflight_mutex_;  // never held across I/O; taken after no other lock
    std::unordered_map<BlockKey, std::pair<std::unique_ptr<std::promise<Result<BlockPtr>>>, SharedBlock>,
                       BlockKeyHash>
        inflight_;

    std::atomic<std::uint64_t> fetches_{0};
    std::atomic<std::uint64_t> joined_{0};
    std::atomic<std::uint64_t> integrity_failures_{0};
    std::atomic<std::uint64_t> bytes_fetched_{0};
};

}  // namespace shelbyfs
