// The local spool: bytes of checkpoint files being written, waiting for
// their upload, under a size limit, and journals of uploads in progress so
// that a crashed mount's pending uploads resume at the next mount.
//
// Layout under the spool directory (one per checkpoint store):
//   inst-<pid>-<random>/lock        flock()ed by the live mount that owns it
//                                   (built as new-<pid>-<random>, locked, renamed)
//   inst-<pid>-<random>/open/<n>    data of files being written
//   inst-<pid>-<random>/pending/<n>.data, <n>.json
//                                   an upload in progress: a hard link to the
//                                   data and the index record to write after it
//   inst-<pid>-<random>/streams/<n> the store key of a temporary object a
//                                   stream wrote, until it is renamed or
//                                   deleted (the next mount deletes it if this
//                                   one dies first; a directory whose notes
//                                   remain is left at exit for the same reason)
// A directory whose lock nobody holds belongs to a mount that died.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "shelbyfs/checkpoint_index.h"
#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

class Spool;

/// The data of one file being written. Not thread-safe: its owner serializes
/// writes, truncates and hashing (reads through pread() may run concurrently).
/// The hash is kept up to date while writes arrive in order; out-of-order
/// writes make finish_hash() re-read the file. Destruction deletes the file
/// and returns its bytes to the spool's budget.
class SpoolFile {
public:
    ~SpoolFile();
    SpoolFile(const SpoolFile&) = delete;
    SpoolFile& operator=(const SpoolFile&) = delete;

    /// Write at `offset`. Growth is charged to the spool limit first: over it,
    /// Errc::NoSpace and nothing is written.
    Result<void> write(std::uint64_t offset, const char* data, std::size_t size);
    Result<std::size_t> read(std::uint64_t offset, char* buffer, std::size_t size) const;
    Result<void> truncate(std::uint64_t size);
    /// The content's hash, size and block hashes (re-reading the file if needed).
    Result<ObjectRef> finish_hash();
    std::uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    friend class Spool;
    SpoolFile(Spool& owner, int fd, std::string path, std::uint64_t block_size);
    void feed(const char* data, std::size_t size);
    void restart_hash();

    Spool& owner_;
    int fd_;
    std::string path_;
    std::uint64_t block_size_;
    std::uint64_t size_ = 0;
    std::uint64_t charged_ = 0;  // bytes charged to the spool budget
    // In-order hashing state: bytes [0, hashed_) are fed.
    Hasher whole_;
    Hasher block_;
    std::uint64_t block_fill_ = 0;
    std::vector<ContentHash> blocks_;
    std::uint64_t hashed_ = 0;
    bool in_order_ = true;
};

/// A note in the spool that a stream is creating a temporary object in the
/// store. Destroy it once the object is gone (renamed, deleted, or never
/// completed); should the mount die first, the next mount deletes the
/// object (Spool::orphan_streams).
class StreamNote {
public:
    ~StreamNote();
    StreamNote(const StreamNote&) = delete;
    StreamNote& operator=(const StreamNote&) = delete;
    /// The object could not be deleted: destruction leaves the note for the
    /// next mount (the spool keeps this mount's directory at exit).
    void keep();

private:
    friend class Spool;
    explicit StreamNote(std::string path) : path_(std::move(path)) {}
    std::string path_;
};

/// Thread-safe.
class Spool {
public:
    /// Open (create) the spool at `dir` and claim a fresh instance directory in it.
    static Result<std::unique_ptr<Spool>> open(const std::string& dir, std::uint64_t limit, std::uint64_t block_size);
    ~Spool();
    Spool(const Spool&) = delete;
    Spool& operator=(const Spool&) = delete;

    /// A new, empty file in this instance's open/ directory.
    Result<std::unique_ptr<SpoolFile>> create_file();

    /// An upload in progress, journaled so a crash does not lose it.
    struct Ticket {
        std::string data_path;
        std::string journal_path;
    };
    /// Record that `file`'s bytes are about to be uploaded, and that `record`
    /// (exactly, key included) is to be written once they are.
    Result<Ticket> journal(const SpoolFile& file, const IndexRecord& record);
    /// Replace the journaled record (the file was renamed or its metadata
    /// changed during the upload): durable before it returns.
    Result<void> rejournal(const Ticket& ticket, const IndexRecord& record);
    /// The upload finished (or failed for good): forget it.
    void drop(const Ticket& ticket);

    /// A journaled upload left behind by a mount that died.
    struct Orphan {
        std::string data_path;
        std::string journal_path;
        IndexRecord record;
    };
    /// Claim every instance directory whose mount is gone and return its
    /// journaled uploads, oldest first. Unreadable journals are logged and skipped.
    std::vector<Orphan> claim_orphans();
    /// Delete the claimed directories of dead mounts whose orphans and
    /// orphan streams are all dropped (the others stay for the next mount).
    void release_orphans();

    /// Note that a stream is about to create the temporary object `key`.
    /// Not synced: it survives the mount's death, not the machine's.
    Result<std::unique_ptr<StreamNote>> note_stream(const std::string& key);
    /// A temporary object noted by a mount that died.
    struct OrphanStream {
        std::string key;
        std::string note_path;
    };
    /// The notes of the dead mounts that claim_orphans() claimed.
    std::vector<OrphanStream> orphan_streams();
    /// The orphan's object is gone from the store: forget the note.
    void drop_stream(const OrphanStream& stream);

    std::uint64_t used() const { return used_.load(); }
    std::uint64_t limit() const { return limit_; }
    const std::string& dir() const { return dir_; }

private:
    friend class SpoolFile;
    Spool(std::string dir, std::string instance, int lock_fd, std::uint64_t limit, std::uint64_t block_size);
    bool charge(std::uint64_t bytes);
    void refund(std::uint64_t bytes);

    const std::string dir_;
    const std::string instance_;  // this mount's instance directory
    int lock_fd_;
    const std::uint64_t limit_;
    const std::uint64_t block_size_;
    std::atomic<std::uint64_t> used_{0};
    std::atomic<std::uint64_t> next_id_{0};
    std::mutex claimed_mutex_;
    std::vector<std::pair<std::string, int>> claimed_;  // dead instances we hold the lock of
};

}  // namespace shelbyfs
