// Tar shard writer and header reader: the only file that includes libarchive.
#include "shelbyfs/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace shelbyfs {

namespace {

// Output is gathered into pieces this big before write(2): with libarchive
// blocking off, each header, data chunk and padding would otherwise be its own
// syscall, which dominates when packing many small files.
constexpr std::size_t kOutputBuffer = 1024 * 1024;
constexpr std::size_t kInputBuffer = 1024 * 1024;
constexpr std::uint64_t kRecord = 512;

std::string errno_text(int err) { return std::strerror(err); }

bool is_ascii(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// libarchive converts names between UTF-8 and the current locale's charset; in
// the "C" locale a non-ASCII UTF-8 name has no such form, and 3.6.2's pax writer
// crashes on the missing ustar name. A thread-local UTF-8 locale, set around
// every libarchive call, makes the conversions the identity without touching
// the process locale.
locale_t utf8_locale() {
    static const locale_t locale = [] {
        for (const char* name : {"C.UTF-8", "C.utf8", "en_US.UTF-8"}) {
            locale_t l = newlocale(LC_CTYPE_MASK, name, static_cast<locale_t>(nullptr));
            if (l != static_cast<locale_t>(nullptr)) return l;
        }
        return static_cast<locale_t>(nullptr);
    }();
    return locale;
}

class Utf8LocaleScope {
public:
    Utf8LocaleScope() {
        if (locale_t l = utf8_locale(); l != static_cast<locale_t>(nullptr)) previous_ = uselocale(l);
    }
    ~Utf8LocaleScope() {
        if (previous_ != static_cast<locale_t>(nullptr)) uselocale(previous_);
    }
    Utf8LocaleScope(const Utf8LocaleScope&) = delete;
    Utf8LocaleScope& operator=(const Utf8LocaleScope&) = delete;

private:
    locale_t previous_ = static_cast<locale_t>(nullptr);
};

std::uint64_t round_up(std::uint64_t value, std::uint64_t unit) { return (value + unit - 1) / unit * unit; }

}  // namespace

struct ShardWriter::Impl {
    std::string path;
    std::uint64_t block_size = 0;
    int fd = -1;
    struct archive* ar = nullptr;
    struct archive_entry* entry = nullptr;

    std::uint64_t written = 0;  // bytes handed to write_callback, buffered or not
    std::uint64_t members = 0;
    Hasher file_hasher;
    Hasher block_hasher;
    std::uint64_t block_fill = 0;
    std::vector<ContentHash> blocks;
    std::vector<char> pending;
    std::vector<char> input;

    int write_errno = 0;
    bool failed = false;
    bool finished = false;
    bool discarding = false;  // aborting: libarchive's closing writes go nowhere

    ~Impl() { abort(); }

    static la_ssize_t write_callback(struct archive*, void* client, const void* buffer, size_t length) {
        auto* impl = static_cast<Impl*>(client);
        return impl->consume(static_cast<const char*>(buffer), length) ? static_cast<la_ssize_t>(length) : -1;
    }

    bool consume(const char* data, std::size_t length) {
        if (discarding) return true;
        if (write_errno != 0) return false;
        written += length;
        file_hasher.update(data, length);
        for (std::size_t done = 0; done < length;) {
            auto take = static_cast<std::size_t>(std::min<std::uint64_t>(length - done, block_size - block_fill));
            block_hasher.update(data + done, take);
            block_fill += take;
            done += take;
            if (block_fill == block_size) {
                blocks.push_back(block_hasher.digest());
                block_hasher.reset();
                block_fill = 0;
            }
        }
        if (pending.size() + length > kOutputBuffer && !flush()) return false;
        if (length >= kOutputBuffer) return write_all(data, length);
        pending.insert(pending.end(), data, data + length);
        return true;
    }

    bool flush() {
        bool ok = write_all(pending.data(), pending.size());
        pending.clear();
        return ok;
    }

    bool write_all(const char* data, std::size_t length) {
        while (length > 0) {
            ssize_t n = ::write(fd, data, length);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                write_errno = n < 0 ? errno : EIO;
                return false;
            }
            data += n;
            length -= static_cast<std::size_t>(n);
        }
        return true;
    }

    Error fail(Errc code, std::string message) {
        failed = true;
        return make_error(code, std::move(message));
    }

    // The error for a failed libarchive call: our own write error if that is
    // what stopped it, otherwise libarchive's message.
    Error archive_failure(std::string_view what) {
        if (write_errno != 0) {
            Errc code = (write_errno == ENOSPC || write_errno == EDQUOT) ? Errc::NoSpace : Errc::Io;
            return fail(code, path + ": write failed: " + errno_text(write_errno));
        }
        const char* text = ar != nullptr ? archive_error_string(ar) : nullptr;
        return fail(Errc::Io, path + ": " + std::string(what) + ": " + (text != nullptr ? text : "libarchive error"));
    }

    Result<void> check_usable() {
        if (failed) return make_error(Errc::Io, path + ": shard writer already failed");
        if (finished || ar == nullptr) return make_error(Errc::Internal, path + ": shard writer already finished (archive-1)");
        return {};
    }

    Result<std::uint64_t> begin_member(std::string_view member_path, std::uint64_t size) {
        if (auto usable = check_usable(); !usable) return std::move(usable).error();
        if (utf8_locale() == static_cast<locale_t>(nullptr) && !is_ascii(member_path))
            return make_error(Errc::InvalidArgument,
                              std::string(member_path) + ": non-ASCII member names need a UTF-8 locale (C.UTF-8)");
        if (size > static_cast<std::uint64_t>(INT64_MAX))
            return make_error(Errc::InvalidArgument, std::string(member_path) + ": member too large");
        archive_entry_clear(entry);
        archive_entry_set_pathname_utf8(entry, std::string(member_path).c_str());
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_perm(entry, 0644);
        archive_entry_set_size(entry, static_cast<la_int64_t>(size));
        archive_entry_set_mtime(entry, 0, 0);
        archive_entry_set_uid(entry, 0);
        archive_entry_set_gid(entry, 0);
        // Anything short of ARCHIVE_OK (even a warning) may mean a mangled name.
        if (archive_write_header(ar, entry) != ARCHIVE_OK)
            return archive_failure("cannot write header for " + std::string(member_path));
        ++members;
        // Blocking is off, so the headers have all reached write_callback.
        return written;
    }

    Result<void> write_data(const char* data, std::size_t length) {
        la_ssize_t n = archive_write_data(ar, data, length);
        if (n < 0 || static_cast<std::size_t>(n) != length) return archive_failure("cannot write member data");
        return {};
    }

    void abort() noexcept {
        discarding = true;
        if (ar != nullptr) archive_write_free(ar);  // may "close" the archive; its output is discarded
        ar = nullptr;
        if (entry != nullptr) archive_entry_free(entry);
        entry = nullptr;
        if (fd >= 0) ::close(fd);
        fd = -1;
        if (!finished) {
            failed = true;
            ::unlink(path.c_str());
            finished = true;  // nothing left to remove on a second call
        }
    }
};

ShardWriter::ShardWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardWriter::ShardWriter(ShardWriter&&) noexcept = default;
ShardWriter& ShardWriter::operator=(ShardWriter&&) noexcept = default;
ShardWriter::~ShardWriter() = default;

Result<ShardWriter> ShardWriter::create(std::string path, std::uint64_t block_size) {
    if (block_size == 0) return make_error(Errc::InvalidArgument, path + ": block size must be positive");
    Utf8LocaleScope locale;
    auto impl = std::make_unique<Impl>();
    impl->path = std::move(path);
    impl->block_size = block_size;
    impl->pending.reserve(kOutputBuffer);
    impl->fd = ::open(impl->path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (impl->fd < 0) {
        int err = errno;
        impl->finished = true;  // not ours: never unlink what we could not create
        return make_error(err == ENOSPC ? Errc::NoSpace : Errc::Io, impl->path + ": cannot create: " + errno_text(err));
    }
    impl->ar = archive_write_new();
    impl->entry = archive_entry_new();
    if (impl->ar == nullptr || impl->entry == nullptr) return make_error(Errc::Internal, "out of memory (archive-2)");
    // bytes_per_block 0 hands every write straight to the callback, so the byte
    // count is exact after each call and the file has no block padding at the end.
    if (archive_write_set_format_pax_restricted(impl->ar) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(impl->ar, 0) != ARCHIVE_OK ||
        archive_write_open2(impl->ar, impl.get(), nullptr, &Impl::write_callback, nullptr, nullptr) != ARCHIVE_OK)
        return impl->archive_failure("cannot start tar archive");
    return ShardWriter(std::move(impl));
}

Result<MemberPlacement> ShardWriter::add_file(std::string_view member_path, int fd, std::uint64_t size,
                                               std::string_view source, const DataCallback& on_data) {
    Utf8LocaleScope locale;
    Impl& s = *impl_;
    auto offset = s.begin_member(member_path, size);
    if (!offset) return std::move(offset).error();
    if (s.input.empty()) s.input.resize(kInputBuffer);
    if (size > kInputBuffer) ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    Hasher hasher;
    std::uint64_t remaining = size;
    for (;;) {
        // Ask for one byte more than is left, so a file that grew since it was
        // measured is caught without an extra read.
        auto want = static_cast<std::size_t>(std::min<std::uint64_t>(remaining + 1, s.input.size()));
        ssize_t n = ::read(fd, s.input.data(), want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return s.fail(Errc::Io, std::string(source) + ": read failed: " + errno_text(errno));
        auto got = static_cast<std::uint64_t>(n);
        if (got > remaining)
            return s.fail(Errc::Io, std::string(source) + ": file grew while being packed (expected " +
                                        std::to_string(size) + " bytes)");
        if (got == 0) {
            if (remaining == 0) break;
            return s.fail(Errc::Io, std::string(source) + ": file shrank while being packed (expected " +
                                        std::to_string(size) + " bytes, got " + std::to_string(size - remaining) + ")");
        }
        hasher.update(s.input.data(), static_cast<std::size_t>(got));
        if (auto w = s.write_data(s.input.data(), static_cast<std::size_t>(got)); !w) return std::move(w).error();
        remaining -= got;
        if (on_data) on_data(got);
        // A short read of a regular file means end of file: no need to ask again.
        if (remaining == 0 && static_cast<std::size_t>(n) < want) break;
    }
    return MemberPlacement{*offset, hasher.digest()};
}

Result<MemberPlacement> ShardWriter::add_data(std::string_view member_path, std::string_view data) {
    Utf8LocaleScope locale;
    Impl& s = *impl_;
    auto offset = s.begin_member(member_path, data.size());
    if (!offset) return std::move(offset).error();
    if (auto w = s.write_data(data.data(), data.size()); !w) return std::move(w).error();
    return MemberPlacement{*offset, ContentHash::of(data)};
}

Result<ShardDigest> ShardWriter::finish() {
    Utf8LocaleScope locale;
    Impl& s = *impl_;
    if (auto usable = s.check_usable(); !usable) return std::move(usable).error();
    if (archive_write_close(s.ar) != ARCHIVE_OK) return s.archive_failure("cannot finish tar archive");
    archive_write_free(s.ar);
    s.ar = nullptr;
    if (!s.flush()) return s.archive_failure("cannot flush");
    if (s.block_fill > 0) s.blocks.push_back(s.block_hasher.digest());
    if (::fsync(s.fd) != 0) {
        int err = errno;
        return s.fail(err == ENOSPC || err == EDQUOT ? Errc::NoSpace : Errc::Io, s.path + ": fsync failed: " + errno_text(err));
    }
    int fd = s.fd;
    s.fd = -1;
    if (::close(fd) != 0) return s.fail(Errc::Io, s.path + ": close failed: " + errno_text(errno));
    s.finished = true;
    return ShardDigest{s.written, s.file_hasher.digest(), std::move(s.blocks)};
}

void ShardWriter::abort() noexcept {
    if (impl_) impl_->abort();
}

const std::string& ShardWriter::path() const { return impl_->path; }
std::uint64_t ShardWriter::bytes_written() const { return impl_->written; }
std::uint64_t ShardWriter::member_count() const { return impl_->members; }
std::uint64_t ShardWriter::projected_size() const { return round_up(impl_->written, kRecord) + kTarTrailerSize; }

std::uint64_t ShardWriter::estimate_member_size(std::string_view member_path, std::uint64_t size) {
    std::uint64_t headers = kRecord;
    // pax_restricted adds an extended header ("NN path=...\n", "NN size=...\n"
    // records) when the name does not fit ustar's 100-byte name field or is not
    // ASCII, or the size does not fit ustar's 11 octal digits.
    constexpr std::uint64_t kUstarMaxSize = 077777777777;
    if (member_path.size() > 100 || !is_ascii(member_path) || size > kUstarMaxSize)
        headers += kRecord + round_up(member_path.size() + 64, kRecord);
    return headers + round_up(size, kRecord);
}

Result<std::vector<TarMember>> read_tar_index(const std::string& path) {
    Utf8LocaleScope locale;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        return make_error(err == ENOENT ? Errc::NotFound : Errc::Io, path + ": cannot open: " + errno_text(err));
    }
    struct archive* ar = archive_read_new();
    if (ar == nullptr) {
        ::close(fd);
        return make_error(Errc::Internal, "out of memory (archive-3)");
    }
    auto cleanup = [&] {
        archive_read_free(ar);
        ::close(fd);
    };
    auto failure = [&](std::string_view what) {
        const char* text = archive_error_string(ar);
        Error e = make_error(Errc::Io, path + ": " + std::string(what) + ": " + (text != nullptr ? text : "libarchive error"));
        cleanup();
        return e;
    };
    archive_read_support_format_tar(ar);
    if (archive_read_open_fd(ar, fd, 64 * 1024) != ARCHIVE_OK) return failure("not a readable tar file");
    std::vector<TarMember> members;
    for (;;) {
        struct archive_entry* entry = nullptr;
        int r = archive_read_next_header(ar, &entry);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN) return failure("bad tar header");
        if (archive_entry_filetype(entry) == AE_IFREG) {
            const char* name = archive_entry_pathname_utf8(entry);
            if (name == nullptr) name = archive_entry_pathname(entry);
            // The tar reader has consumed the headers and none of the data, so
            // the bytes consumed so far are the data offset.
            members.push_back(TarMember{name != nullptr ? name : "", static_cast<std::uint64_t>(archive_filter_bytes(ar, 0)),
                                        static_cast<std::uint64_t>(archive_entry_size(entry))});
        }
        if (archive_read_data_skip(ar) < ARCHIVE_WARN) return failure("cannot skip member data");
    }
    cleanup();
    return members;
}

}  // namespace shelbyfs
