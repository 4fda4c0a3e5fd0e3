// Checkpoints: the writable tree under <mnt>/checkpoints.
//
// Files are written into a local spool. On flush (close) or fsync their
// bytes are hashed (XXH3-128), uploaded to the store as objects/<hash>
// unless already there, verified (the store reports the right size), and
// only then is the name published by an immutable index record. On an HTTP
// store, a file written in order is sent while it is written, to a
// temporary uploads/ key that close() renames (MOVE, keeping an intact
// object already stored) to objects/<hash>. The call
// returns once all of that is durable; any failure returns an error (EIO)
// and publishes nothing. Objects and records are never overwritten or
// deleted; every version of every name stays readable under .versions/.
//
// FUSE-free and thread-safe. Lock order: a file's mutex, then ns_mutex_
// (serializes namespace changes and record writes), then tree_mutex_ (the
// in-memory tree; never held across I/O).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shelbyfs/checkpoint_index.h"
#include "shelbyfs/fetcher.h"
#include "shelbyfs/fs_types.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/result.h"
#include "shelbyfs/spool.h"

namespace shelbyfs {

/// Checkpoint inode numbers start here (the static tree stays far below).
inline constexpr InodeNo kCheckpointInoBase = InodeNo{1} << 48;
inline constexpr std::string_view kVersionsDir = ".versions";
inline constexpr std::string_view kHashXattr = "user.shelbyfs.hash";

struct CheckpointOptions {
    std::string spool_dir;                             ///< this store's spool directory
    std::uint64_t spool_size = std::uint64_t{8} << 30;  ///< bytes of unuploaded data allowed
    std::uint64_t block_size = std::uint64_t{1} << 20;  ///< block hashes for verified reads
    double ttl_seconds = 1.0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::int64_t mount_time_ns = 0;  ///< mtime of directories
    int load_parallelism = 8;        ///< index records fetched at once when mounting
};

class Checkpoints {
public:
    /// Open the spool, resume uploads a dead mount left pending, and replay
    /// the store's index. `root_ino` is <mnt>/checkpoints, child of the root.
    static Result<std::unique_ptr<Checkpoints>> open(ObjectStore& store, Fetcher& fetcher, CheckpointOptions options,
                                                     InodeNo root_ino);
    ~Checkpoints();

    bool owns(InodeNo ino) const { return ino == root_ino_ || ino >= kCheckpointInoBase; }

    // `caller`: the thread that made the request, as the kernel numbers it
    // (its TID in the mount's PID namespace); 0 = unknown.

    Result<Attr> lookup(InodeNo parent, std::string_view name);
    Result<Attr> getattr(InodeNo ino);
    Result<Attr> setattr(InodeNo ino, const SetAttrRequest& request, FileHandle fh, CallerId caller = 0);
    Result<std::vector<DirEntry>> readdir(InodeNo ino);
    Result<void> opendir(InodeNo ino);

    Result<FileHandle> open(InodeNo ino, int flags, CallerId caller = 0);
    Result<std::pair<Attr, FileHandle>> create(InodeNo parent, std::string_view name, mode_t mode, int flags,
                                               CallerId caller = 0);
    Result<std::size_t> read(FileHandle fh, std::uint64_t offset, std::size_t size, char* buffer);
    /// As read(): published versions as slices of cached blocks, a file being
    /// written as one buffer read from the spool.
    Result<ReadSlices> read_slices(FileHandle fh, std::uint64_t offset, std::size_t size);
    Result<std::size_t> write(FileHandle fh, std::uint64_t offset, const char* data, std::size_t size,
                              CallerId caller = 0);
    /// close(): publish the file if it changed. Errors mean it is not durable.
    /// A close by a process that changed nothing in the file (a child that
    /// inherited the descriptor and closed it, as every subprocess started
    /// while the file is open does) publishes nothing: the processes that
    /// changed it publish at their own close. Changes of unknown origin
    /// (writes from the kernel's writeback of a shared mapping) turn this off.
    Result<void> flush(FileHandle fh, CallerId caller = 0);
    Result<void> fsync(FileHandle fh);
    void release(FileHandle fh);

    Result<Attr> mkdir(InodeNo parent, std::string_view name, mode_t mode);
    Result<void> unlink(InodeNo parent, std::string_view name);
    Result<void> rmdir(InodeNo parent, std::string_view name);
    /// flags: 0 or RENAME_NOREPLACE; RENAME_EXCHANGE is not supported (EINVAL).
    Result<void> rename(InodeNo parent, std::string_view name, InodeNo new_parent, std::string_view new_name,
                        unsigned flags);

    Result<void> setxattr(InodeNo ino, std::string_view name, std::string_view value, int flags);
    Result<std::string> getxattr(InodeNo ino, std::string_view name);
    Result<std::vector<std::string>> listxattr(InodeNo ino);
    Result<void> removexattr(InodeNo ino, std::string_view name);

    struct Stats {
        std::uint64_t uploads = 0;         ///< objects uploaded
        std::uint64_t upload_bytes = 0;
        std::uint64_t deduplicated = 0;    ///< publishes whose object was already stored
        std::uint64_t streamed = 0;        ///< uploads sent while the file was written
        std::uint64_t records = 0;         ///< index records written
        std::uint64_t failures = 0;        ///< publishes that failed
        std::uint64_t spool_used = 0;
        std::uint64_t spool_limit = 0;
    };
    Stats stats() const;

    /// Called when a name or inode changes without the kernel asking (a close
    /// that could not save): parent != 0 means the entry `name` in `parent`
    /// is gone; parent == 0 means the attributes and pages of `ino` changed.
    /// Called with internal locks held: it must only queue the news (the
    /// FUSE adapter tells the kernel from another thread).
    using Invalidator = std::function<void(InodeNo ino, InodeNo parent, const std::string& name)>;
    void set_invalidator(Invalidator f) { invalidate_ = std::move(f); }

private:
    struct Version;
    struct OpenState;
    struct Node;
    struct Handle;

    Checkpoints(ObjectStore& store, Fetcher& fetcher, CheckpointOptions options, InodeNo root_ino);
    Result<void> load();
    Result<void> resume_orphans();

    // Tree helpers; caller holds tree_mutex_.
    Node* find(InodeNo ino);
    Node& node(InodeNo ino);
    Node* child(Node& dir, std::string_view name);
    std::string path_of(const Node& n) const;
    bool in_versions(const Node& n) const;
    Node& new_node(Node& parent, std::string name, bool is_dir, mode_t mode);
    void detach(Node& n);
    Attr attr_of(const Node& n) const;
    Node* walk(std::string_view path, bool create_dirs);
    void add_version(const std::string& path, const std::shared_ptr<Version>& v);
    void apply(const IndexOp& op, std::int64_t time_ns);
    std::uint32_t object_of(Version& v);
    void collect_ops(Node& n, const std::string& from, const std::string& to, std::vector<IndexOp>& add,
                     std::vector<IndexOp>& remove);
    std::shared_ptr<Version> make_version(const IndexOp& put, std::int64_t time_ns) const;
    IndexOp put_op(const Node& n, const std::string& path, const ObjectRef& object) const;
    IndexOp meta_op(const Node& n, const std::string& path) const;

    // I/O helpers; no tree_mutex_ held.
    IndexRecord next_record(std::vector<IndexOp> ops);
    Result<void> write_record(const IndexRecord& record);
    Result<void> upload(const ObjectRef& object, const std::string& data_path);
    Result<void> store_object(const ObjectRef& object, const std::function<Result<void>(const std::string& key)>& place,
                              const std::function<void()>& discard, bool* absent = nullptr);
    Result<void> verify_stored(const ObjectRef& object, const std::string& key);
    // Streamed uploads: a file written in order is sent while it is written.
    void follow_with_stream(OpenState& open, std::uint64_t offset, std::size_t size);
    static void stop_stream(OpenState& open);
    Result<void> finish_stream(OpenState& open, const ObjectRef& object);
    void discard_stream_object(const std::string& key, std::unique_ptr<StreamNote>& note);
    Result<void> publish(InodeNo ino, OpenState& open);
    Result<void> record_meta_locked(InodeNo ino);
    Result<void> change_xattrs(InodeNo ino, const std::function<Result<void>(XattrMap&)>& edit);
    Result<std::shared_ptr<OpenState>> materialize(InodeNo ino, bool truncate);
    Result<std::shared_ptr<OpenState>> begin_write(InodeNo ino, bool truncate, CallerId caller);
    void note_change(OpenState& os, CallerId caller);
    void end_write(InodeNo ino, const std::shared_ptr<OpenState>& os);
    void abandon(InodeNo ino, OpenState& os);
    void drop_name(Node& n);
    void revert(Node& n);
    Handle handle(FileHandle fh);

    ObjectStore& store_;
    Fetcher& fetcher_;
    const CheckpointOptions options_;
    const InodeNo root_ino_;
    std::unique_ptr<Spool> spool_;
    std::string writer_;  // 16 hex digits, fresh per mount

    std::mutex ns_mutex_;
    mutable std::mutex tree_mutex_;
    std::unordered_map<InodeNo, std::unique_ptr<Node>> nodes_;
    InodeNo next_ino_ = kCheckpointInoBase;
    InodeNo versions_ino_ = 0;
    std::unordered_map<std::string, std::uint32_t> objects_by_hash_;  // hex -> fetcher index
    std::unordered_map<FileHandle, std::unique_ptr<Handle>> handles_;
    FileHandle next_handle_ = 1;

    std::mutex record_mutex_;  // time and sequence of records
    std::int64_t last_record_ns_ = 0;
    std::uint64_t seq_ = 0;

    Invalidator invalidate_;

    std::atomic<std::uint64_t> uploads_{0}, upload_bytes_{0}, deduplicated_{0}, records_{0}, failures_{0}, streamed_{0};
    std::atomic<std::uint64_t> stream_seq_{0};
    std::atomic<bool> no_replace_moves_{true};  // the store honours WebDAV "Overwrite: F"
    std::atomic<int> no_replace_refusals_{0};    // in a row
};

}  // namespace shelbyfs
