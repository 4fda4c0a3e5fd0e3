// Persistent content-addressed block files: verified lookup, temp-and-rename insert, LRU quota.
#include "shelbyfs/disk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <tuple>

#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

// Temporary files older than this are left over from a process that died
// mid-insert; the scan deletes them. An hour is far longer than any write.
constexpr std::time_t kStaleTempSeconds = 3600;

bool is_hex(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

}  // namespace

DiskCache::DiskCache(std::string dir, std::uint64_t budget_bytes) : dir_(std::move(dir)), budget_(budget_bytes) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec || ::access(dir_.c_str(), R_OK | W_OK | X_OK) != 0) {
        std::string why = ec ? ec.message() : std::strerror(errno);
        log::warn("disk-cache", dir_ + ": " + why + "; running without a disk cache");
        enabled_ = false;
        scanned_ = true;
        return;
    }
    scanner_ = std::jthread([this](std::stop_token stop) { scan(stop); });
}

DiskCache::~DiskCache() = default;  // scanner_ requests stop and joins

std::string DiskCache::path_of(const std::string& hex) const { return dir_ + "/" + hex.substr(0, 2) + "/" + hex; }

void DiskCache::warn_once(std::atomic<bool>& flag, const std::string& message) {
    if (!flag.exchange(true)) log::warn("disk-cache", message + " (further disk cache errors are not logged)");
}

void DiskCache::touch_locked(const std::string& hex, std::uint64_t bytes) {
    auto it = index_.find(hex);
    if (it != index_.end()) {
        lru_.splice(lru_.end(), lru_, it->second);
        return;
    }
    lru_.emplace_back(hex, bytes);
    index_.emplace(hex, std::prev(lru_.end()));
    bytes_ += bytes;
}

void DiskCache::forget(const std::string& hex) {
    std::lock_guard lock(mutex_);
    auto it = index_.find(hex);
    if (it == index_.end()) return;
    bytes_ -= it->second->second;
    lru_.erase(it->second);
    index_.erase(it);
}

std::vector<std::string> DiskCache::pick_victims_locked(std::uint64_t incoming) {
    std::vector<std::string> victims;
    while (!lru_.empty() && bytes_ + incoming > budget_) {
        auto& [hex, bytes] = lru_.front();
        bytes_ -= bytes;
        index_.erase(hex);
        victims.push_back(std::move(hex));
        lru_.pop_front();
    }
    return victims;
}

std::optional<std::string> DiskCache::lookup(const ContentHash& hash, std::uint64_t length) {
    if (!is_enabled()) return std::nullopt;
    std::string hex = hash.hex();
    std::string path = path_of(hex);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        // Not there (never stored, or evicted by another mount sharing DIR).
        forget(hex);
        misses_.fetch_add(1, std::memory_order_relaxed);
        return std::nullopt;
    }
    std::optional<std::string> data;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) == length) {
        try {
            std::string buf(static_cast<std::size_t>(length), '\0');
            std::size_t got = 0;
            while (got < buf.size()) {
                ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                got += static_cast<std::size_t>(n);
            }
            if (got == buf.size()) data = std::move(buf);
        } catch (...) {
            // Without memory for the copy this is just a miss.
            ::close(fd);
            misses_.fetch_add(1, std::memory_order_relaxed);
            return std::nullopt;
        }
    }
    if (!data || ContentHash::of(*data) != hash) {
        ::close(fd);
        // A torn write, a truncated file or bit rot: never hand it out.
        log::warn("disk-cache", path + ": wrong length or hash; deleted");
        ::unlink(path.c_str());
        forget(hex);
        verify_failures_.fetch_add(1, std::memory_order_relaxed);
        misses_.fetch_add(1, std::memory_order_relaxed);
        return std::nullopt;
    }
    // Mark it recently used for other processes' scans; failure only costs LRU accuracy.
    ::futimens(fd, nullptr);
    ::close(fd);
    try {
        std::lock_guard lock(mutex_);
        touch_locked(hex, length);
    } catch (...) {
        // Untracked: it is not counted against the quota until seen again.
    }
    hits_.fetch_add(1, std::memory_order_relaxed);
    return data;
}

void DiskCache::insert(const ContentHash& hash, std::string_view bytes) noexcept {
    if (!is_enabled() || bytes.size() > budget_) return;
    try {
        std::string hex = hash.hex();
        std::vector<std::string> victims;
        // Stored already (same name, same bytes) unless another mount deleted
        // it since the index saw it: a background scan that listed the file
        // just before that can leave a stale entry, and trusting it would
        // never store the block again.
        struct stat st {};
        const bool on_disk = ::stat(path_of(hex).c_str(), &st) == 0;
        {
            std::lock_guard lock(mutex_);
            if (index_.count(hex) != 0 && on_disk) return;
            victims = pick_victims_locked(bytes.size());
            // Reserve its bytes now, so concurrent inserts evict for it too.
            touch_locked(hex, bytes.size());
        }
        for (const std::string& v : victims) {
            ::unlink(path_of(v).c_str());  // ENOENT: another mount evicted it first
            evictions_.fetch_add(1, std::memory_order_relaxed);
        }
        std::string sub = dir_ + "/" + hex.substr(0, 2);
        std::string tmp = sub + "/.tmp-" + std::to_string(::getpid()) + "-" +
                          std::to_string(temp_seq_.fetch_add(1, std::memory_order_relaxed));
        auto fail = [&](const char* step) {
            int e = errno;
            ::unlink(tmp.c_str());
            forget(hex);
            warn_once(warned_write_, dir_ + ": " + step + " failed: " + std::strerror(e));
            // A directory we may not write to will not become writable: stop trying.
            if (e == EACCES || e == EPERM || e == EROFS) enabled_ = false;
        };
        if (::mkdir(sub.c_str(), 0755) != 0 && errno != EEXIST) return fail("mkdir");
        int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) return fail("create");
        bool written = write_all(fd, bytes);
        int write_errno = errno;
        if (::close(fd) != 0 && written) {
            written = false;
            write_errno = errno;
        }
        if (!written) {
            errno = write_errno;
            return fail("write");
        }
        if (::rename(tmp.c_str(), path_of(hex).c_str()) != 0) return fail("rename");
        inserts_.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard lock(mutex_);
        touch_locked(hex, bytes.size());  // again, in case a lookup's miss forgot it meanwhile
    } catch (...) {
        // Out of memory for names: not caching is fine.
    }
}

void DiskCache::scan(std::stop_token stop) {
    // (mtime, name, size) of every block file; collected without the lock.
    std::vector<std::tuple<std::int64_t, std::string, std::uint64_t>> found;
    try {
        DIR* top = ::opendir(dir_.c_str());
        std::vector<std::string> subs;
        if (top != nullptr) {
            while (dirent* e = ::readdir(top)) {
                std::string_view name = e->d_name;
                if (name.size() == 2 && is_hex(name)) subs.emplace_back(name);
            }
            ::closedir(top);
        }
        std::time_t now = std::time(nullptr);
        for (const std::string& sub : subs) {
            if (stop.stop_requested()) break;
            std::string path = dir_ + "/" + sub;
            DIR* d = ::opendir(path.c_str());
            if (d == nullptr) continue;
            int dfd = ::dirfd(d);
            while (dirent* e = ::readdir(d)) {
                std::string_view name = e->d_name;
                struct stat st {};
                bool block = name.size() == 32 && is_hex(name) && name.substr(0, 2) == sub;
                bool temp = name.substr(0, 5) == ".tmp-";
                if ((!block && !temp) || ::fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                    !S_ISREG(st.st_mode))
                    continue;
                if (temp) {
                    if (now - st.st_mtim.tv_sec > kStaleTempSeconds) ::unlinkat(dfd, e->d_name, 0);
                    continue;
                }
                found.emplace_back(st.st_mtim.tv_sec, std::string(name), static_cast<std::uint64_t>(st.st_size));
            }
            ::closedir(d);
        }
        std::sort(found.begin(), found.end());
    } catch (...) {
        found.clear();  // without memory for the list, the quota covers only our own inserts
    }
    std::vector<std::string> victims;
    {
        std::lock_guard lock(mutex_);
        try {
            // Files found on disk are older than anything this process has
            // used: they go in front, oldest first.
            for (auto it = found.rbegin(); it != found.rend(); ++it) {
                const std::string& hex = std::get<1>(*it);
                std::uint64_t bytes = std::get<2>(*it);
                if (index_.count(hex) != 0) continue;
                lru_.emplace_front(hex, bytes);
                index_.emplace(hex, lru_.begin());
                bytes_ += bytes;
            }
            victims = pick_victims_locked(0);
        } catch (...) {
            // A partial index only under-counts the quota.
        }
        scanned_ = true;
    }
    scanned_cv_.notify_all();
    for (const std::string& v : victims) {
        ::unlink(path_of(v).c_str());
        evictions_.fetch_add(1, std::memory_order_relaxed);
    }
    log::debug("disk-cache", dir_ + ": found " + std::to_string(found.size()) + " blocks");
}

void DiskCache::wait_scanned() {
    std::unique_lock lock(mutex_);
    scanned_cv_.wait(lock, [&] { return scanned_; });
}

DiskCache::Stats DiskCache::stats() const {
    std::uint64_t bytes;
    {
        std::lock_guard lock(mutex_);
        bytes = bytes_;
    }
    return Stats{hits_.load(),         misses_.load(), inserts_.load(), evictions_.load(), verify_failures_.load(),
                 bytes};
}

}  // namespace shelbyfs
