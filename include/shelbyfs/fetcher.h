// Fetcher: cache miss -> ranged read -> verify against the manifest hash -> insert; sequential prefetch.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/block_cache.h"
#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

class DiskCache;

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
    /// Largest prefetch window, in blocks, of one sequential stream; 0 turns
    /// prefetch off. The window starts at 2 and doubles per block the stream
    /// advances, up to this.
    std::uint32_t prefetch_blocks = 32;
    /// Most prefetched bytes not yet read (in flight, queued or cached and
    /// untouched) over all objects; 0 = a quarter of the cache's budget.
    std::uint64_t prefetch_budget_bytes = 0;
    /// An object of at most this many blocks is prefetched whole, in parallel,
    /// at its first read (while that read's own blocks are fetched): random
    /// reads of a small shard, such as the first batch of a shuffled epoch,
    /// then pay one round trip instead of one per block. Blocks are queued
    /// in order; a read that needs a queued one moves it up. 0 = off. Needs
    /// prefetch_blocks > 0; counts against prefetch_budget_bytes: what does
    /// not fit is queued by later reads of the object as reads free budget.
    std::uint64_t whole_object_blocks = 0;
    /// The objects given to the constructor (the dataset) fit in the cache
    /// together. Each of them of at most prefetch_budget_bytes is then
    /// prefetched whole too: in an epoch every block is read, and stays
    /// cached, so this costs no extra bytes and turns the round trip per
    /// block of a shuffled first pass into a bandwidth-bound sweep. Their
    /// prefetched blocks hold budget only until cached, since they displace
    /// nothing. Objects added later (checkpoints) keep the general rules.
    bool dataset_fits_cache = false;
    /// Most prefetch worker threads, started as work arrives. Each owns one
    /// request at a time, so this bounds prefetch requests on the wire; 16
    /// matches HttpClient's default connection limit.
    unsigned prefetch_threads = 16;
    /// Optional second tier, consulted by the leader of a fetch before the
    /// network and given every block verified after one; null = none. It
    /// must outlive the Fetcher.
    DiskCache* disk_cache = nullptr;
};

/// Thread-safe. Serves reads of objects from the BlockCache, fetching missing
/// blocks through the BlobReader. Concurrent misses on one block share one
/// request (single-flight). A block is verified before it is cached or
/// returned; a block that keeps failing verification gives Errc::Integrity,
/// and the log names the object and byte range. Never holds a lock across I/O.
///
/// Prefetch: each object keeps a few recent read streams. A read that lands in
/// or next to the last block of a stream continues it; once a stream has been
/// continued twice it is sequential and gets a window of blocks ahead of it
/// (2, doubling per block advanced, up to prefetch_blocks). Blocks in the
/// window that are neither cached nor in flight are registered in the same
/// single-flight table as demand fetches, so a reader that arrives while one
/// is in flight joins it, and are fetched, verified and cached by worker
/// threads (std::jthread) that the Fetcher owns. A read never waits for a
/// prefetch it does not need. Per object, at most `window` prefetches are in
/// flight; over all objects, prefetched-but-unread bytes stay within
/// prefetch_budget_bytes (a quarter of the cache by default, so prefetch
/// only ever displaces blocks that were read, never unread prefetched ones).
/// A read that does not continue a stream starts a new one with no window:
/// random access costs one lock and no requests. A prefetch that fails is
/// reported to no one: its waiters fetch the block again on demand and get
/// that fetch's result; nothing is cached.
///
/// Destruction stops the workers, abandons their outstanding requests and
/// fails prefetches still queued; no read may be running.
class Fetcher {
public:
    Fetcher(BlobReader& reader, BlockCache& cache, std::vector<ObjectSpec> objects, FetcherOptions options = {});
    ~Fetcher();
    Fetcher(const Fetcher&) = delete;
    Fetcher& operator=(const Fetcher&) = delete;

    /// Copy up to `size` bytes at `offset` of object `object` into `buffer`.
    /// Returns the byte count: short only at the object's end (0 past it).
    Result<std::size_t> read(std::uint32_t object, std::uint64_t offset, char* buffer, std::size_t size);
    /// The same bytes as slices of the cached blocks, without copying them.
    Result<ReadSlices> read_slices(std::uint32_t object, std::uint64_t offset, std::size_t size);
    /// The same, only if every block is in the memory cache already; else
    /// nullopt, counted as no cache miss. Fetches nothing itself; for
    /// prefetch it is a read (it consumes prefetched blocks and moves the
    /// reader's stream on), as the caller hands the bytes on to a reader.
    std::optional<ReadSlices> cached_slices(std::uint32_t object, std::uint64_t offset, std::size_t size);

    /// Register another object (a checkpoint published while mounted) and
    /// return its index. Specs are never removed; references stay valid.
    std::uint32_t add_object(ObjectSpec spec);
    const ObjectSpec& object(std::uint32_t index) const;
    std::size_t object_count() const;

    /// Block until no prefetch is queued or in flight (tests, benchmarks).
    void wait_prefetch_idle();
    /// For tests, once idle: what is wrong with the prefetch bookkeeping
    /// (queue, in-flight table, unread budget), or "" if nothing is.
    std::string audit();

    struct Stats {
        std::uint64_t fetches = 0;        ///< demand block requests started (misses that led and missed the disk cache)
        std::uint64_t joined = 0;         ///< misses that joined an in-flight fetch or prefetch
        std::uint64_t integrity_failures = 0;
        std::uint64_t bytes_fetched = 0;  ///< demand and prefetch
        std::uint64_t prefetched = 0;     ///< blocks whose prefetch was started
        std::uint64_t prefetch_hits = 0;  ///< prefetched blocks a read then used
        std::uint64_t prefetch_failures = 0;  ///< prefetches that ended in an error
        std::uint64_t promoted = 0;  ///< queued prefetches a read joined and moved up
    };
    Stats stats() const;

private:
    using SharedBlock = std::shared_future<Result<BlockPtr>>;
    struct Inflight {
        std::unique_ptr<std::promise<Result<BlockPtr>>> promise;
        SharedBlock result;
        bool prefetch = false;  // a failure is then retried by its joiners
    };
    struct Slot {
        BlockKey key;
        BlockPtr ready;                        // cache hit
        SharedBlock pending;                   // joined or led fetch
        std::promise<Result<BlockPtr>>* lead = nullptr;  // set when this caller leads
        BlockPtr from_disk;                    // led, and found in the disk cache
        bool joined_prefetch = false;
        std::future<Result<std::string>> first_attempt;
    };
    /// One run of reads through an object. `last` is the highest block read,
    /// `next` the first block not yet considered for prefetch.
    struct Stream {
        std::uint64_t last = 0;
        std::uint64_t next = 0;
        std::uint64_t used = 0;     // ObjectStreams::clock at the last read, for replacement
        std::uint32_t run = 0;      // reads that continued the stream
        std::uint32_t window = 0;   // 0 = not (yet) sequential
    };
    // Eight streams: enough for the interleaved readers of one shard (several
    // DataLoader workers, the kernel's parallel readahead) to each keep theirs.
    static constexpr std::size_t kStreams = 8;
    struct ObjectStreams {
        std::array<Stream, kStreams> streams;
        std::size_t count = 0;
        std::uint64_t clock = 0;
        std::uint32_t inflight = 0;  // prefetches of this object not yet finished
        std::uint64_t whole_next = 0;  // whole-object prefetch: the next block to queue
    };
    /// A prefetched block not yet read; `block` is set once it is cached, and
    /// expires when the cache evicts it unread.
    struct Unread {
        std::uint64_t bytes = 0;
        std::weak_ptr<const std::string> block;
        bool done = false;
        bool wanted = false;  // a read joined it while in flight
    };
    enum class Origin { Demand, Prefetch };

    /// Resolve a fetch this caller leads and remove it from inflight_.
    void publish(const BlockKey& key, const Result<BlockPtr>& result) noexcept;
    Slot acquire(const BlockKey& key);
    Result<BlockPtr> complete(Slot& slot);
    Result<BlockPtr> verify_or_refetch(const BlockKey& key, std::future<Result<std::string>> first, Origin origin,
                                       std::stop_token stop);
    /// The block from the disk cache (verified there), or null.
    BlockPtr load_from_disk(const ObjectSpec& o, const BlockKey& key);
    /// Note a read of blocks [first, last] and start the prefetches it calls for.
    void prefetch_after(std::uint32_t object, const ObjectSpec& o, std::uint64_t first, std::uint64_t last) noexcept;
    /// Register and queue a prefetch of `key` unless it is cached or in flight.
    /// False when a limit stops prefetch for now.
    bool start_prefetch_locked(const BlockKey& key, std::uint64_t bytes, ObjectStreams& os);
    void consume_locked(const BlockKey& key);
    /// A finished prefetch of `key` whose block left the cache unread.
    bool evicted_unread_locked(const BlockKey& key, const Unread& u) const;
    bool dataset_fits(std::uint32_t object) const {
        return options_.dataset_fits_cache && object < dataset_objects_;
    }
    void promote_queued(const std::vector<Slot>& slots) noexcept;
    void prune_unread_locked();
    void prefetch_worker(std::stop_token stop);
    void run_prefetch(const BlockKey& key, std::stop_token stop);
    /// The spec of `index`, or null if there is none.
    const ObjectSpec* find(std::uint32_t index) const;
    static std::uint64_t block_offset(const ObjectSpec& o, const BlockKey& key);
    /// [offset, offset + length) of the object as slices of `blocks`, the
    /// blocks from offset's onwards (moved into the slices).
    static ReadSlices slice_blocks(const ObjectSpec& o, std::vector<BlockPtr>& blocks, std::uint64_t offset,
                                   std::size_t length);
    static std::uint64_t block_length(const ObjectSpec& o, const BlockKey& key);

    BlobReader& reader_;
    BlockCache& cache_;
    mutable std::shared_mutex objects_mutex_;  // guards the vector, not the (immutable) specs
    std::vector<std::unique_ptr<const ObjectSpec>> objects_;
    const FetcherOptions options_;
    const std::uint64_t prefetch_budget_;
    const std::size_t dataset_objects_;  // objects_[0, this) came with the constructor

    // Lock order: prefetch_mutex_, then inflight_mutex_, then the cache's.
    // Neither is held across I/O.
    std::mutex inflight_mutex_;
    std::unordered_map<BlockKey, Inflight, BlockKeyHash> inflight_;

    std::mutex prefetch_mutex_;  // guards the members from here to idle_workers_, and workers_
    std::condition_variable_any queue_cv_;  // work queued, or stop
    std::condition_variable idle_cv_;       // pending_ reached 0
    std::unordered_map<std::uint32_t, ObjectStreams> streams_;
    std::unordered_map<BlockKey, Unread, BlockKeyHash> unread_;
    std::uint64_t unread_bytes_ = 0;
    std::deque<BlockKey> queue_;
    std::size_t promoted_front_ = 0;  // queue_'s first entries that reads promoted, in their order
    std::uint64_t pruned_at_evictions_ = 0;  // the cache's eviction count at the last prune
    std::size_t pending_ = 0;  // prefetches registered and not yet finished
    unsigned idle_workers_ = 0;

    std::atomic<std::uint64_t> fetches_{0};
    std::atomic<std::uint64_t> joined_{0};
    std::atomic<std::uint64_t> integrity_failures_{0};
    std::atomic<std::uint64_t> bytes_fetched_{0};
    std::atomic<std::uint64_t> prefetched_{0};
    std::atomic<std::uint64_t> prefetch_hits_{0};
    std::atomic<std::uint64_t> prefetch_failures_{0};
    std::atomic<std::uint64_t> promoted_{0};

    std::vector<std::jthread> workers_;  // guarded by prefetch_mutex_; joined in ~Fetcher
};

}  // namespace shelbyfs
