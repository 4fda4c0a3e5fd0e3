// `shelbyfs pack`: walk a tree, write tar shards through ShardWriter, then the manifest.
#include "shelbyfs/pack.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "shelbyfs/archive.h"
#include "shelbyfs/log.h"
#include "shelbyfs/units.h"

namespace shelbyfs {

namespace {

using Clock = std::chrono::steady_clock;

struct SourceFile {
    std::string path;  // relative to src_dir, '/'-separated
    std::uint64_t size = 0;
};

class FdGuard {
public:
    explicit FdGuard(int fd) : fd_(fd) {}
    ~FdGuard() {
        if (fd_ >= 0) ::close(fd_);
    }
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

std::string join(std::string_view dir, std::string_view name) {
    std::string out(dir);
    if (!out.empty() && out.back() != '/') out += '/';
    out += name;
    return out;
}

Errc errc_for(int err) {
    switch (err) {
        case ENOENT: return Errc::NotFound;
        case ENOTDIR: return Errc::NotDirectory;
        case ENOSPC:
        case EDQUOT: return Errc::NoSpace;
        default: return Errc::Io;
    }
}

Error sys_error(const std::string& path, std::string_view what, int err) {
    return make_error(errc_for(err), path + ": " + std::string(what) + ": " + std::strerror(err));
}

// Length of the well-formed UTF-8 sequence starting at text[i], 0 if there is none
// (overlong forms, surrogates and code points past U+10FFFF are ill-formed).
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
    auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
    unsigned char c = byte(i);
    if (c < 0x80) return 1;
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) length = 2;
    else if (c >= 0xE0 && c <= 0xEF) length = 3;
    else if (c >= 0xF0 && c <= 0xF4) length = 4;
    else return 0;
    if (c == 0xE0) low = 0xA0;
    if (c == 0xED) high = 0x9F;
    if (c == 0xF0) low = 0x90;
    if (c == 0xF4) high = 0x8F;
    if (i + length > text.size()) return 0;
    for (std::size_t k = 1; k < length; ++k) {
        unsigned char b = byte(i + k);
        if (k == 1 ? (b < low || b > high) : (b < 0x80 || b > 0xBF)) return 0;
    }
    return length;
}

bool is_valid_utf8(std::string_view text) {
    for (std::size_t i = 0; i < text.size();) {
        std::size_t n = utf8_sequence_length(text, i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

// A path for messages: bytes that are not UTF-8 are shown as \xNN.
std::string printable(std::string_view path) {
    std::string out;
    for (std::size_t i = 0; i < path.size();) {
        std::size_t n = utf8_sequence_length(path, i);
        if (n == 0) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02X", static_cast<unsigned>(static_cast<unsigned char>(path[i])));
            out += hex;
            n = 1;
        } else {
            out.append(path, i, n);
        }
        i += n;
    }
    return out;
}

const char* kind_name(mode_t mode) {
    if (S_ISFIFO(mode)) return "fifo";
    if (S_ISSOCK(mode)) return "socket";
    if (S_ISCHR(mode)) return "character device";
    if (S_ISBLK(mode)) return "block device";
    return "special file";
}

// Collects the regular files under a directory (and the regular files that
// symlinks point at). Holds one directory fd per level of depth.
class TreeWalker {
public:
    TreeWalker(std::string root_display, std::optional<std::pair<dev_t, ino_t>> skip_dir)
        : root_display_(std::move(root_display)), skip_dir_(skip_dir) {}

    // Takes ownership of dir_fd.
    Result<void> walk(int dir_fd, const std::string& prefix) {
        std::string dir_display = prefix.empty() ? root_display_ : join(root_display_, printable(prefix));
        DIR* raw = ::fdopendir(dir_fd);
        if (raw == nullptr) {
            int err = errno;
            ::close(dir_fd);
            return sys_error(dir_display, "cannot read directory", err);
        }
        std::unique_ptr<DIR, int (*)(DIR*)> dir(raw, &::closedir);
        std::vector<std::string> names;
        for (;;) {
            errno = 0;
            const dirent* entry = ::readdir(dir.get());
            if (entry == nullptr) {
                if (errno != 0) return sys_error(dir_display, "cannot read directory", errno);
                break;
            }
            std::string_view name = entry->d_name;
            if (name != "." && name != "..") names.emplace_back(name);
        }
        // Byte-wise order (std::string compares as unsigned char), so warnings
        // come out in a stable order too.
        std::sort(names.begin(), names.end());
        for (const std::string& name : names) {
            std::string rel = prefix.empty() ? name : prefix + "/" + name;
            std::string display = join(root_display_, printable(rel));
            struct stat st {};
            if (::fstatat(::dirfd(dir.get()), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
                return sys_error(display, "cannot stat", errno);
            if (S_ISLNK(st.st_mode)) {
                // A dangling or looping link is a file we were asked to pack and cannot read.
                if (::fstatat(::dirfd(dir.get()), name.c_str(), &st, 0) != 0)
                    return sys_error(display, "cannot follow symlink", errno);
                if (S_ISREG(st.st_mode)) {
                    if (auto ok = add(std::move(rel), display, st); !ok) return ok;
                } else if (S_ISDIR(st.st_mode)) {
                    log::warn("pack", "skipping symlink to a directory: " + display);
                } else {
                    log::warn("pack", std::string("skipping symlink to a ") + kind_name(st.st_mode) + ": " + display);
                }
            } else if (S_ISDIR(st.st_mode)) {
                if (skip_dir_ && skip_dir_->first == st.st_dev && skip_dir_->second == st.st_ino) {
                    log::warn("pack", "skipping the output directory: " + display);
                    continue;
                }
                int sub = ::openat(::dirfd(dir.get()), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0) return sys_error(display, "cannot open directory", errno);
                if (auto ok = walk(sub, rel); !ok) return ok;
            } else if (S_ISREG(st.st_mode)) {
                if (auto ok = add(std::move(rel), display, st); !ok) return ok;
            } else {
                log::warn("pack", std::string("skipping ") + kind_name(st.st_mode) + ": " + display);
            }
        }
        return {};
    }

    std::vector<SourceFile>& files() { return files_; }

private:
    Result<void> add(std::string rel, const std::string& display, const struct stat& st) {
        if (!is_valid_utf8(rel))
            return make_error(Errc::InvalidArgument,
                              display + ": file name is not valid UTF-8 (manifest paths are JSON strings); rename it");
        files_.push_back(SourceFile{std::move(rel), static_cast<std::uint64_t>(st.st_size)});
        return {};
    }

    std::string root_display_;
    std::optional<std::pair<dev_t, ino_t>> skip_dir_;
    std::vector<SourceFile> files_;
};

// Everything this run creates under out-dir. Until commit() succeeds the
// destructor removes it all again: partial files, any final names already
// renamed into place, and the directories made for out-dir.
class OutputFiles {
public:
    explicit OutputFiles(std::string dir) : dir_(std::move(dir)) {}
    ~OutputFiles() {
        if (committed_) return;
        for (const Pending& p : pending_) ::unlink(p.renamed ? p.final_path.c_str() : p.partial_path.c_str());
        for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
    }
    OutputFiles(const OutputFiles&) = delete;
    OutputFiles& operator=(const OutputFiles&) = delete;

    // mkdir -p, remembering what was made.
    Result<void> make_dir() {
        std::vector<std::string> missing;
        std::string path = dir_;
        while (path.size() > 1 && path.back() == '/') path.pop_back();
        while (!path.empty()) {
            struct stat st {};
            if (::stat(path.c_str(), &st) == 0) {
                if (!S_ISDIR(st.st_mode)) return make_error(Errc::NotDirectory, path + ": not a directory");
                break;
            }
            if (errno != ENOENT) return sys_error(path, "cannot stat", errno);
            missing.push_back(path);
            std::size_t slash = path.rfind('/');
            path = slash == std::string::npos ? std::string() : slash == 0 ? std::string("/") : path.substr(0, slash);
        }
        for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
            if (::mkdir(it->c_str(), 0755) == 0) created_dirs_.push_back(*it);
            else if (errno != EEXIST) return sys_error(*it, "cannot create directory", errno);
        }
        return {};
    }

    void add(std::string partial_path, std::string final_path) {
        pending_.push_back(Pending{std::move(partial_path), std::move(final_path), false});
    }

    // Rename everything into place in the order added (the manifest last), then
    // fsync the directory so the renames are durable.
    Result<void> commit() {
        for (Pending& p : pending_) {
            if (::rename(p.partial_path.c_str(), p.final_path.c_str()) != 0)
                return sys_error(p.partial_path, "cannot rename to " + p.final_path, errno);
            p.renamed = true;
        }
        int fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) return sys_error(dir_, "cannot open directory", errno);
        FdGuard guard(fd);
        if (::fsync(fd) != 0) return sys_error(dir_, "fsync failed", errno);
        committed_ = true;
        return {};
    }

private:
    struct Pending {
        std::string partial_path;
        std::string final_path;
        bool renamed;
    };
    std::string dir_;
    std::vector<Pending> pending_;
    std::vector<std::string> created_dirs_;
    bool committed_ = false;
};

Result<void> write_file_synced(const std::string& path, std::string_view content) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return sys_error(path, "cannot create", errno);
    FdGuard guard(fd);
    while (!content.empty()) {
        ssize_t n = ::write(fd, content.data(), content.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return sys_error(path, "write failed", n < 0 ? errno : EIO);
        content.remove_prefix(static_cast<std::size_t>(n));
    }
    if (::fsync(fd) != 0) return sys_error(path, "fsync failed", errno);
    return {};
}

std::string shard_name(std::size_t index) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "shard-%06zu.tar", index);
    return buf;
}

std::string shard_location(const std::string& base_url, const std::string& name) {
    if (base_url.empty()) return name;
    return base_url.back() == '/' ? base_url + name : base_url + "/" + name;
}

Result<PackSummary> pack_impl(const PackOptions& options) {
    const auto start = Clock::now();
    if (options.src_dir.empty()) return make_error(Errc::InvalidArgument, "pack: no source directory given");
    if (options.out_dir.empty()) return make_error(Errc::InvalidArgument, "pack: no output directory given");
    if (options.shard_size == 0) return make_error(Errc::InvalidArgument, "pack: shard size must be positive");
    const std::string manifest_path = join(options.out_dir, "manifest.json");
    {
        // Check the block size the way the manifest will, before any work is done.
        Manifest probe;
        probe.block_size = options.block_size;
        if (auto ok = probe.validate(manifest_path); !ok) return std::move(ok).error();
    }

    int root = ::open(options.src_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return sys_error(options.src_dir, "cannot open directory", errno);
    FdGuard root_fd(root);
    struct stat src_st {};
    if (::fstat(root, &src_st) != 0) return sys_error(options.src_dir, "cannot stat", errno);
    std::optional<std::pair<dev_t, ino_t>> skip_dir;
    if (struct stat out_st {}; ::stat(options.out_dir.c_str(), &out_st) == 0 && S_ISDIR(out_st.st_mode)) {
        if (out_st.st_dev == src_st.st_dev && out_st.st_ino == src_st.st_ino)
            return make_error(Errc::InvalidArgument,
                              options.out_dir + ": the output directory cannot be the source directory");
        skip_dir = std::make_pair(out_st.st_dev, out_st.st_ino);
    }

    std::vector<SourceFile> files;
    {
        // The walker owns the fd it is given; keep root for openat() below.
        int walk_fd = ::dup(root);
        if (walk_fd < 0) return sys_error(options.src_dir, "cannot open directory", errno);
        TreeWalker walker(options.src_dir, skip_dir);
        if (auto ok = walker.walk(walk_fd, ""); !ok) return std::move(ok).error();
        files = std::move(walker.files());
    }
    // Sample order is the byte-wise order of the full relative paths (what
    // `LC_ALL=C sort` gives), independent of readdir order.
    std::sort(files.begin(), files.end(),
              [](const SourceFile& a, const SourceFile& b) { return a.path < b.path; });
    if (files.empty()) log::warn("pack", options.src_dir + ": no files to pack; the manifest will be empty");
    std::uint64_t total_bytes = 0;
    for (const SourceFile& f : files) total_bytes += f.size;

    // Declared before the writer so an unfinished shard is aborted (and its
    // file removed) before the output directories are rmdir'ed.
    OutputFiles output(options.out_dir);
    if (auto ok = output.make_dir(); !ok) return std::move(ok).error();

    ProgressLine progress(progress_enabled(options.progress), "packing", "files", files.size(), total_bytes);
    const ShardWriter::DataCallback on_data = [&progress](std::uint64_t n) { progress.add_bytes(n); };

    Manifest manifest;
    manifest.block_size = options.block_size;
    manifest.samples.reserve(files.size());
    std::optional<ShardWriter> writer;
    PackSummary summary;

    auto finish_shard = [&]() -> Result<void> {
        auto digest = writer->finish();
        if (!digest) return std::move(digest).error();
        writer.reset();
        std::string name = shard_name(manifest.shards.size());
        summary.shard_bytes += digest->size;
        manifest.shards.push_back(ShardInfo{name, shard_location(options.base_url, name), digest->size,
                                            digest->hash, std::move(digest->blocks)});
        return {};
    };

    for (const SourceFile& file : files) {
        std::string display = join(options.src_dir, file.path);
        // O_NONBLOCK: if the file was swapped for a fifo since the walk, open must not hang.
        int fd = ::openat(root, file.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) return sys_error(display, "cannot open", errno);
        FdGuard fd_guard(fd);
        struct stat st {};
        if (::fstat(fd, &st) != 0) return sys_error(display, "cannot stat", errno);
        if (!S_ISREG(st.st_mode)) return make_error(Errc::Io, display + ": no longer a regular file");
        auto size = static_cast<std::uint64_t>(st.st_size);

        // A shard is full when this member would push it past shard_size; a
        // shard always takes at least one member, so an oversized sample gets
        // a shard of its own.
        if (writer && writer->member_count() > 0 &&
            writer->projected_size() + ShardWriter::estimate_member_size(file.path, size) > options.shard_size) {
            if (auto ok = finish_shard(); !ok) return std::move(ok).error();
        }
        if (!writer) {
            std::string name = shard_name(manifest.shards.size());
            std::string partial = join(options.out_dir, "." + name + ".partial");
            auto created = ShardWriter::create(partial, options.block_size);
            if (!created) return std::move(created).error();
            writer.emplace(std::move(*created));
            output.add(std::move(partial), join(options.out_dir, name));
        }
        auto placement = writer->add_file(file.path, fd, size, display, on_data);
        if (!placement) return std::move(placement).error();
        manifest.samples.push_back(SampleInfo{file.path, static_cast<std::uint32_t>(manifest.shards.size()),
                                              placement->offset, size, placement->hash});
        ++summary.files;
        summary.bytes += size;
        progress.add_item();
    }
    if (writer) {
        if (auto ok = finish_shard(); !ok) return std::move(ok).error();
    }

    if (auto ok = manifest.validate(manifest_path); !ok) return std::move(ok).error();
    std::string json = manifest.to_json();
    std::string manifest_partial = join(options.out_dir, ".manifest.json.partial");
    output.add(manifest_partial, manifest_path);
    if (auto ok = write_file_synced(manifest_partial, json); !ok) return std::move(ok).error();
    if (auto ok = output.commit(); !ok) return std::move(ok).error();
    progress.finish();

    summary.shards = manifest.shards.size();
    summary.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return summary;
}

}  // namespace

Result<PackSummary> pack(const PackOptions& options) {
    // Unwinding runs the same cleanup as an error return: nothing half-written stays.
    try {
        return pack_impl(options);
    } catch (const std::bad_alloc&) {
        return make_error(Errc::Internal, "pack: out of memory (pack-1)");
    } catch (const std::exception& e) {
        return make_error(Errc::Internal, std::string("pack: ") + e.what() + " (pack-2)");
    }
}

}  // namespace shelbyfs
