// Tar shards: writing them for `pack` and listing their members. The only libarchive user.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

/// Size of the end-of-archive marker (two zero 512-byte records) finish() appends.
inline constexpr std::uint64_t kTarTrailerSize = 1024;

/// What finish() reports about a completed shard.
struct ShardDigest {
    std::uint64_t size = 0;           ///< bytes in the file, trailer included
    ContentHash hash;                 ///< XXH3-128 of the whole file
    std::vector<ContentHash> blocks;  ///< XXH3-128 of each block_size piece, the last one shorter
};

/// Where add_file()/add_data() put a member.
struct MemberPlacement {
    std::uint64_t offset = 0;  ///< of the member's data in the shard (just past its headers)
    ContentHash hash;          ///< XXH3-128 of the member's data
};

/// Writes one tar shard: pax-restricted format (a pax header only when a name
/// is long or non-ASCII, names in UTF-8), plain file members only, with fixed
/// metadata (mtime 0, uid/gid 0, no uname/gname, mode 0644) so the same members
/// give byte-identical files. libarchive output blocking is off, so the shard
/// ends right after the end-of-archive marker and every byte passes through a
/// counting callback that also hashes the file and each block_size piece of it.
///
/// Ownership: the writer owns the file at path() until finish() succeeds; after
/// that the file (complete and fsync'ed, ready to rename) is the caller's. If the
/// writer is destroyed or abort()ed before that, the file is removed.
/// Errors: every failure names the file ("out/.shard-000003.tar.partial: write
/// failed: No space left on device", Errc::NoSpace for ENOSPC/EDQUOT, else
/// Errc::Io) or the source being read. After any error the writer is failed:
/// later calls return an error, and the caller should abort().
/// Thread-safety: reentrant (one writer per thread). Member names are converted
/// under a thread-local UTF-8 locale, so the process locale does not matter.
class ShardWriter {
public:
    /// Called with the number of member bytes just copied (for progress lines).
    using DataCallback = std::function<void(std::uint64_t bytes)>;

    /// Create (or truncate) the file at `path` and start a shard. block_size > 0.
    static Result<ShardWriter> create(std::string path, std::uint64_t block_size);

    ShardWriter(ShardWriter&&) noexcept;
    ShardWriter& operator=(ShardWriter&&) noexcept;
    ~ShardWriter();  ///< abort()s unless finish() succeeded

    /// Append a member named `member_path` ('/'-separated UTF-8) holding exactly
    /// `size` bytes read from `fd` at its current position. `source` names the fd
    /// in messages. Fails if the fd yields fewer bytes, or more (the file
    /// changed while it was being packed).
    Result<MemberPlacement> add_file(std::string_view member_path, int fd, std::uint64_t size,
                                     std::string_view source, const DataCallback& on_data = {});
    /// Append a member holding `data`.
    Result<MemberPlacement> add_data(std::string_view member_path, std::string_view data);

    /// Write the end-of-archive marker, flush, fsync and close the file.
    Result<ShardDigest> finish();
    /// Drop the shard and remove its file. Safe to call at any time, more than once.
    void abort() noexcept;

    const std::string& path() const;
    /// Bytes written to the shard so far (headers and data; a member's padding
    /// is written with the next member or the trailer).
    std::uint64_t bytes_written() const;
    /// The size finish() would give now: padding and trailer included.
    std::uint64_t projected_size() const;
    std::uint64_t member_count() const;

    /// Rough tar cost of a member (headers + data + padding), to decide when a
    /// shard is full. Exact for short ASCII names; may be off by a record or two
    /// when a pax header is needed.
    static std::uint64_t estimate_member_size(std::string_view member_path, std::uint64_t size);

private:
    struct Impl;
    explicit ShardWriter(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// One regular-file member of an existing tar file.
struct TarMember {
    std::string path;  ///< as stored (pax path if present), UTF-8
    std::uint64_t offset = 0;  ///< of the data in the file
    std::uint64_t size = 0;
};

/// List the regular-file members of the tar file at `path` (other entry types
/// are skipped), in archive order, with their data offsets. Reads headers only,
/// skipping over data. Reentrant.
Result<std::vector<TarMember>> read_tar_index(const std::string& path);

}  // namespace shelbyfs
