// The local spool of checkpoint data: files being written and journaled uploads.
#include "shelbyfs/spool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "shelbyfs/log.h"

namespace shelbyfs {

namespace fs = std::filesystem;

namespace {

Error io_error(const std::string& what, int err) {
    return make_error(err == ENOSPC ? Errc::NoSpace : Errc::Io, "spool: " + what + ": " + std::strerror(err));
}

Result<void> write_all(int fd, const char* data, std::size_t size, std::uint64_t offset, const std::string& path) {
    while (size > 0) {
        ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            return io_error("write " + path, errno);
        }
        data += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
    return {};
}

Result<void> write_file_synced(const std::string& path, const std::string& text) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return io_error("create " + path, errno);
    auto w = write_all(fd, text.data(), text.size(), 0, path);
    if (w && ::fsync(fd) != 0) w = io_error("fsync " + path, errno);
    ::close(fd);
    if (!w) ::unlink(path.c_str());
    return w;
}

void fsync_dir(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    ::close(fd);
}

std::string random_hex() {
    std::random_device rd;
    std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

}  // namespace

// ---- SpoolFile ----

SpoolFile::SpoolFile(Spool& owner, int fd, std::string path, std::uint64_t block_size)
    : owner_(owner), fd_(fd), path_(std::move(path)), block_size_(block_size) {}

SpoolFile::~SpoolFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
    owner_.refund(charged_);
}

void SpoolFile::feed(const char* data, std::size_t size) {
    whole_.update(data, size);
    hashed_ += size;
    while (size > 0) {
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, block_size_ - block_fill_));
        block_.update(data, n);
        block_fill_ += n;
        data += n;
        size -= n;
        if (block_fill_ == block_size_) {
            blocks_.push_back(block_.digest());
            block_.reset();
            block_fill_ = 0;
        }
    }
}

void SpoolFile::restart_hash() {
    whole_.reset();
    block_.reset();
    block_fill_ = 0;
    blocks_.clear();
    hashed_ = 0;
    in_order_ = true;
}

Result<void> SpoolFile::write(std::uint64_t offset, const char* data, std::size_t size) {
    std::uint64_t end = offset + size;
    if (end > charged_) {
        if (!owner_.charge(end - charged_))
            return make_error(Errc::NoSpace, "spool: " + path_ + ": the spool limit (" +
                                                 std::to_string(owner_.limit()) + " bytes) is reached");
        charged_ = end;
    }
    auto w = write_all(fd_, data, size, offset, path_);
    if (!w) {
        in_order_ = false;  // part of it may have landed: the running hash is stale
        return w;
    }
    if (in_order_ && offset == hashed_) feed(data, size);
    else in_order_ = false;
    size_ = std::max(size_, end);
    return {};
}

Result<std::size_t> SpoolFile::read(std::uint64_t offset, char* buffer, std::size_t size) const {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::pread(fd_, buffer + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return io_error("read " + path_, errno);
        }
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    return done;
}

Result<void> SpoolFile::truncate(std::uint64_t size) {
    if (size > charged_) {
        if (!owner_.charge(size - charged_))
            return make_error(Errc::NoSpace, "spool: " + path_ + ": the spool limit is reached");
        charged_ = size;
    }
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return io_error("truncate " + path_, errno);
    if (size < charged_) {
        owner_.refund(charged_ - size);
        charged_ = size;
    }
    if (size != hashed_) in_order_ = false;
    size_ = size;
    return {};
}

Result<ObjectRef> SpoolFile::finish_hash() {
    if (!in_order_ || hashed_ != size_) {
        restart_hash();
        std::string buf(std::min<std::uint64_t>(std::max<std::uint64_t>(block_size_, 1 << 20), 8 << 20), '\0');
        while (hashed_ < size_) {
            std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size_ - hashed_));
            auto n = read(hashed_, buf.data(), want);
            if (!n) return std::move(n).error();
            if (*n != want) return make_error(Errc::Io, "spool: " + path_ + ": file shorter than written");
            feed(buf.data(), want);
        }
    }
    ObjectRef ref;
    ref.hash = whole_.digest();
    ref.size = size_;
    ref.block_size = block_size_;
    ref.blocks = blocks_;
    if (block_fill_ > 0) ref.blocks.push_back(block_.digest());
    return ref;
}

// ---- Spool ----

Spool::Spool(std::string dir, std::string instance, int lock_fd, std::uint64_t limit, std::uint64_t block_size)
    : dir_(std::move(dir)), instance_(std::move(instance)), lock_fd_(lock_fd), limit_(limit), block_size_(block_size) {}

Result<std::unique_ptr<Spool>> Spool::open(const std::string& dir, std::uint64_t limit, std::uint64_t block_size) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return make_error(Errc::Io, "spool directory " + dir + ": " + ec.message());
    ::chmod(dir.c_str(), 0700);
    // Built and locked under a temporary name, then renamed: another mount
    // scanning for dead instances never sees an inst- directory unlocked.
    std::string name = std::to_string(::getpid()) + "-" + random_hex();
    std::string building = dir + "/new-" + name;
    std::string instance = dir + "/inst-" + name;
    for (const char* sub : {"/open", "/pending", "/streams"}) {
        fs::create_directories(building + sub, ec);
        if (ec) return make_error(Errc::Io, "spool directory " + building + sub + ": " + ec.message());
    }
    std::string lock_path = building + "/lock";
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return io_error("create " + lock_path, errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || ::rename(building.c_str(), instance.c_str()) != 0) {
        int err = errno;
        ::close(fd);
        fs::remove_all(building, ec);
        return io_error("claim " + instance, err);
    }
    fsync_dir(dir);
    return std::unique_ptr<Spool>(new Spool(dir, instance, fd, limit, block_size));
}

Spool::~Spool() {
    release_orphans();
    std::error_code ec;
    // Notes of temporaries that could not be deleted: the next mount that
    // claims this directory (unlocked once we close the lock) deletes them.
    if (fs::is_empty(instance_ + "/streams", ec) || ec) {
        fs::remove_all(instance_, ec);
    } else {
        fs::remove_all(instance_ + "/open", ec);
        log::info("spool", "keeping " + instance_ + ": temporary uploads to delete at the next mount");
    }
    ::close(lock_fd_);
}

bool Spool::charge(std::uint64_t bytes) {
    std::uint64_t cur = used_.load();
    do {
        if (cur + bytes > limit_) return false;
    } while (!used_.compare_exchange_weak(cur, cur + bytes));
    return true;
}

void Spool::refund(std::uint64_t bytes) { used_.fetch_sub(bytes); }

Result<std::unique_ptr<SpoolFile>> Spool::create_file() {
    std::string path = instance_ + "/open/" + std::to_string(next_id_.fetch_add(1));
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return io_error("create " + path, errno);
    return std::unique_ptr<SpoolFile>(new SpoolFile(*this, fd, path, block_size_));
}

Result<Spool::Ticket> Spool::journal(const SpoolFile& file, const IndexRecord& record) {
    std::string base = instance_ + "/pending/" + std::to_string(next_id_.fetch_add(1));
    Ticket t{base + ".data", base + ".json"};
    if (::link(file.path().c_str(), t.data_path.c_str()) != 0) return io_error("link " + t.data_path, errno);
    auto w = write_file_synced(t.journal_path, record.to_json());
    if (!w) {
        ::unlink(t.data_path.c_str());
        return std::move(w).error();
    }
    fsync_dir(instance_ + "/pending");
    return t;
}

Result<void> Spool::rejournal(const Ticket& ticket, const IndexRecord& record) {
    std::string tmp = ticket.journal_path + ".new";
    auto w = write_file_synced(tmp, record.to_json());
    if (!w) return w;
    if (::rename(tmp.c_str(), ticket.journal_path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        return io_error("rename " + tmp, err);
    }
    fsync_dir(instance_ + "/pending");
    return {};
}

// Data first: a crash in between leaves a journal without data, which the
// next mount drops, rather than data no journal points at.
void Spool::drop(const Ticket& ticket) {
    ::unlink(ticket.data_path.c_str());
    ::unlink(ticket.journal_path.c_str());
}

std::vector<Spool::Orphan> Spool::claim_orphans() {
    std::vector<Orphan> out;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
        std::string inst = entry.path().string();
        if (inst == instance_ || entry.path().filename().string().rfind("inst-", 0) != 0) continue;
        int fd = ::open((inst + "/lock").c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) continue;
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {  // a live mount owns it
            ::close(fd);
            continue;
        }
        {
            std::lock_guard lock(claimed_mutex_);
            claimed_.emplace_back(inst, fd);
        }
        // Files that were being written when it died were never saved.
        fs::remove_all(inst + "/open", ec);
        std::vector<std::string> journals;
        for (const auto& p : fs::directory_iterator(inst + "/pending", ec))
            if (p.path().extension() == ".json") journals.push_back(p.path().string());
        for (const std::string& j : journals) {
            std::string data = j.substr(0, j.size() - 5) + ".data";
            std::string text;
            {
                int jfd = ::open(j.c_str(), O_RDONLY | O_CLOEXEC);
                if (jfd >= 0) {
                    char buf[65536];
                    ssize_t n;
                    while ((n = ::read(jfd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
                    ::close(jfd);
                }
            }
            auto rec = IndexRecord::parse(text, j);
            if (!rec || ::access(data.c_str(), R_OK) != 0) {
                log::error("spool", "dropping an unreadable journal of a dead mount: " +
                                        (rec ? data + " is missing" : rec.error().message));
                ::unlink(j.c_str());
                ::unlink(data.c_str());
                continue;
            }
            out.push_back(Orphan{data, j, std::move(*rec)});
        }
    }
    std::sort(out.begin(), out.end(), [](const Orphan& a, const Orphan& b) {
        return std::make_pair(a.record.time_ns, a.journal_path) < std::make_pair(b.record.time_ns, b.journal_path);
    });
    return out;
}

void Spool::release_orphans() {
    std::lock_guard lock(claimed_mutex_);
    for (auto& [inst, fd] : claimed_) {
        std::error_code ec;
        bool empty = fs::is_empty(inst + "/pending", ec);
        // Directories from before streams/ existed have none.
        if (!ec && empty && fs::exists(inst + "/streams", ec)) empty = fs::is_empty(inst + "/streams", ec);
        if (!ec && empty) fs::remove_all(inst, ec);
        ::close(fd);
    }
    claimed_.clear();
}

StreamNote::~StreamNote() {
    if (!path_.empty()) ::unlink(path_.c_str());
}

void StreamNote::keep() { path_.clear(); }

Result<std::unique_ptr<StreamNote>> Spool::note_stream(const std::string& key) {
    std::string path = instance_ + "/streams/" + std::to_string(next_id_.fetch_add(1));
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return io_error("create " + path, errno);
    auto w = write_all(fd, key.data(), key.size(), 0, path);
    ::close(fd);
    if (!w) {
        ::unlink(path.c_str());
        return std::move(w).error();
    }
    return std::unique_ptr<StreamNote>(new StreamNote(path));
}

std::vector<Spool::OrphanStream> Spool::orphan_streams() {
    std::vector<OrphanStream> out;
    std::lock_guard lock(claimed_mutex_);
    for (const auto& [inst, fd] : claimed_) {
        std::error_code ec;
        for (const auto& p : fs::directory_iterator(inst + "/streams", ec)) {
            std::string note = p.path().string();
            std::string key;
            int nfd = ::open(note.c_str(), O_RDONLY | O_CLOEXEC);
            if (nfd >= 0) {
                char buf[4096];
                ssize_t n;
                while (key.size() < 4096 && (n = ::read(nfd, buf, sizeof buf)) > 0)
                    key.append(buf, static_cast<std::size_t>(n));
                ::close(nfd);
            }
            if (key.empty()) {  // the mount (or machine) died writing it: no stream had started
                ::unlink(note.c_str());
                continue;
            }
            out.push_back(OrphanStream{std::move(key), std::move(note)});
        }
    }
    std::sort(out.begin(), out.end(), [](const OrphanStream& a, const OrphanStream& b) { return a.key < b.key; });
    return out;
}

void Spool::drop_stream(const OrphanStream& stream) { ::unlink(stream.note_path.c_str()); }

}  // namespace shelbyfs
