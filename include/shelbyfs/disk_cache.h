// DiskCache: a persistent, content-addressed block cache in a local directory, under a byte quota.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shelbyfs/hash.h"

namespace shelbyfs {

/// Thread-safe. A second tier under the in-memory BlockCache: verified blocks
/// kept as files DIR/<first 2 hex>/<32 hex of their XXH3-128>, so a block is
/// named by what it holds and the directory is safe to share between mounts,
/// manifests and processes; there is no index file.
///
/// lookup() reads the file named by the expected hash and returns the bytes
/// only if their length and XXH3-128 match; a file that does not match is
/// deleted (a verification failure) and reported as a miss. insert() writes
/// DIR/xx/.tmp-<pid>-<n> and renames it into place, without fsync: a torn file
/// fails verification on its next lookup. Temporary names never look like a
/// block (they are not 32 hex digits).
///
/// Quota: the bytes this process knows of (files found by a start-up scan on
/// a background thread, plus its own inserts and hits) stay within `budget`;
/// an insert that would pass it first deletes least recently used files
/// (oldest mtime from the scan, then in the order this process used them; a
/// hit also touches the file's mtime for other processes' scans). Another
/// mount sharing DIR may delete files at any time: a missing file is a miss.
///
/// Errors never fail a read: lookup() then returns nullopt and insert() does
/// nothing. The first failure of each kind (creating DIR, writing a block) is
/// logged as a warning; a DIR that cannot be created or written leaves the
/// cache disabled (every lookup a miss, every insert a no-op).
///
/// The mutex is a leaf and never held across disk I/O. Destruction stops the
/// scan; no lookup or insert may be running.
class DiskCache {
public:
    DiskCache(std::string dir, std::uint64_t budget_bytes);
    ~DiskCache();
    DiskCache(const DiskCache&) = delete;
    DiskCache& operator=(const DiskCache&) = delete;

    /// The verified bytes of the block with this hash and length, or nullopt.
    std::optional<std::string> lookup(const ContentHash& hash, std::uint64_t length);
    /// Store verified `bytes`, whose hash is `hash`. Never throws.
    void insert(const ContentHash& hash, std::string_view bytes) noexcept;

    /// False once DIR turned out unusable.
    bool is_enabled() const { return enabled_.load(std::memory_order_relaxed); }
    const std::string& dir() const { return dir_; }
    /// Block until the start-up scan has finished (tests).
    void wait_scanned();

    struct Stats {
        std::uint64_t hits = 0;
        std::uint64_t misses = 0;
        std::uint64_t inserts = 0;
        std::uint64_t evictions = 0;
        std::uint64_t verify_failures = 0;  ///< files deleted for a wrong length or hash
        std::uint64_t bytes = 0;            ///< bytes known to be in DIR
    };
    Stats stats() const;

private:
    using Lru = std::list<std::pair<std::string, std::uint64_t>>;  // hex, bytes; front = least recent
    std::string path_of(const std::string& hex) const;
    /// Record `hex` as most recently used with `bytes`.
    void touch_locked(const std::string& hex, std::uint64_t bytes);
    void forget(const std::string& hex);
    /// Take files off the LRU until `incoming` more bytes fit; returns their names.
    std::vector<std::string> pick_victims_locked(std::uint64_t incoming);
    void scan(std::stop_token stop);
    void warn_once(std::atomic<bool>& flag, const std::string& message);

    const std::string dir_;
    const std::uint64_t budget_;
    std::atomic<bool> enabled_{true};
    std::atomic<bool> warned_write_{false};
    std::atomic<std::uint64_t> temp_seq_{0};

    mutable std::mutex mutex_;  // leaf lock; guards lru_, index_, bytes_, scanned_
    std::condition_variable scanned_cv_;
    Lru lru_;
    std::unordered_map<std::string, Lru::iterator> index_;
    std::uint64_t bytes_ = 0;
    bool scanned_ = false;

    std::atomic<std::uint64_t> hits_{0};
    std::atomic<std::uint64_t> misses_{0};
    std::atomic<std::uint64_t> inserts_{0};
    std::atomic<std::uint64_t> evictions_{0};
    std::atomic<std::uint64_t> verify_failures_{0};

    std::jthread scanner_;  // last: stopped and joined before the members above go
};

}  // namespace shelbyfs
