// The writable checkpoints tree: spool, hash, upload, verify, publish.
#include "shelbyfs/checkpoint.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <random>

#include "shelbyfs/http_client.h"
#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

constexpr std::uint32_t kNoObject = UINT32_MAX;
constexpr std::size_t kMaxXattrValue = 64 * 1024;
constexpr std::size_t kMaxXattrTotal = 256 * 1024;

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
        i += n;
    }
    return true;
}

Result<void> check_name(std::string_view name) {
    if (name.empty() || name == "." || name == "..")
        return make_error(Errc::InvalidArgument, "invalid name \"" + std::string(name) + "\"");
    if (name.size() > 255) return make_error(Errc::InvalidArgument, "name longer than 255 bytes");
    if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos || !valid_utf8(name))
        return make_error(Errc::InvalidArgument,
                          "checkpoint names must be UTF-8 without '/' or NUL (\"" + std::string(name) + "\")");
    return {};
}

std::string join(const std::string& dir, std::string_view name) {
    return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
}

std::string parent_of(std::string_view path) {
    auto slash = path.rfind('/');
    return slash == std::string_view::npos ? std::string() : std::string(path.substr(0, slash));
}

std::string base_of(std::string_view path) {
    auto slash = path.rfind('/');
    return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

std::string random_writer_id() {
    std::random_device rd;
    std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ static_cast<std::uint64_t>(now_ns());
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

// uploads/<writer: 16 hex digits>-<sequence number>: the only keys a
// stream writes, and so the only ones a dead mount's notes may delete.
bool is_stream_key(std::string_view key) {
    if (key.substr(0, kUploadsPrefix.size()) != kUploadsPrefix) return false;
    key.remove_prefix(kUploadsPrefix.size());
    if (key.size() < 18 || key[16] != '-') return false;
    auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
    for (std::size_t i = 0; i < key.size(); ++i) {
        const char ch = key[i];
        const bool ok = i < 16 ? digit(ch) || (ch >= 'a' && ch <= 'f') : i == 16 || digit(ch);
        if (!ok) return false;
    }
    return true;
}

Result<ContentHash> hash_file(const std::string& path, std::uint64_t* size) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(Errc::Io, path + ": " + std::strerror(errno));
    Hasher h;
    std::string buf(1 << 20, '\0');
    *size = 0;
    for (;;) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int err = errno;
            ::close(fd);
            return make_error(Errc::Io, path + ": " + std::strerror(err));
        }
        if (n == 0) break;
        h.update(buf.data(), static_cast<std::size_t>(n));
        *size += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return h.digest();
}

}  // namespace

struct Checkpoints::Version {
    ObjectRef object;          // immutable
    std::int64_t time_ns = 0;  // immutable: when it was published
    // Recorded metadata; changed by meta records (under tree_mutex_).
    mode_t mode = 0644;
    std::int64_t mtime_ns = 0;
    XattrMap xattrs;
    std::uint32_t fetcher_object = kNoObject;  // assigned on first read
};

// The spooled bytes of a file open for writing.
struct Checkpoints::OpenState {
    std::mutex mutex;  // serializes write, truncate and publish
    std::unique_ptr<SpoolFile> file;
    std::atomic<bool> dirty{false};         // differs from the published version
    std::atomic<std::uint64_t> size{0};     // for getattr without the mutex
    int writers = 0;      // writable handles sharing it (under tree_mutex_)
    std::atomic<bool> failed{false};  // a write or close failed: detached, never published
    // The upload that follows the writes (HTTP stores): it has been handed
    // [0, streamed) of the spool file, under the temporary key stream_key.
    std::unique_ptr<StreamingPut> stream;
    std::string stream_key;
    std::unique_ptr<StreamNote> stream_note;  // until the temporary object is gone
    std::uint64_t streamed = 0;
    bool no_stream = false;  // a write out of order, a truncate or a save: upload at close instead
    // Who changed it (under mutex): (thread, its process) pairs, or anyone
    // once a change came from an unknown thread. See flush().
    std::vector<std::pair<CallerId, std::uint32_t>> changers;
    bool anyone = false;
};

namespace {

// The process (thread group) of thread `tid`, from /proc; 0 if unknown,
// and for kernel threads (a file server's threads write and close for
// clients, not as one process).
std::uint32_t process_of(CallerId tid) {
    // The kernel numbers callers in the mount's PID namespace; a /proc of
    // another namespace would name other tasks.
    static const bool proc_is_ours = [] {
        char link[32] = {};
        ssize_t n = ::readlink("/proc/self", link, sizeof link - 1);
        return n > 0 && std::strtol(link, nullptr, 10) == static_cast<long>(::getpid());
    }();
    if (tid == 0 || !proc_is_ours) return 0;
    std::string path = "/proc/" + std::to_string(tid) + "/status";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    // Kernel threads: "Kthread: 1" (Linux 6.x), else a child of kthreadd.
    const char* kthread = std::strstr(buf, "\nKthread:\t");
    if (kthread != nullptr ? kthread[10] == '1' : std::strstr(buf, "\nPPid:\t2\n") != nullptr) return 0;
    const char* at = std::strstr(buf, "\nTgid:");
    if (at == nullptr) return 0;
    unsigned long v = std::strtoul(at + 6, nullptr, 10);
    return v > 0 && v <= UINT32_MAX ? static_cast<std::uint32_t>(v) : 0;
}

}  // namespace

// Record that `caller` changed `os` (os.mutex held, or `os` not shared yet).
void Checkpoints::note_change(OpenState& os, CallerId caller) {
    if (os.anyone) return;
    for (const auto& c : os.changers)
        if (c.first == caller) return;
    std::uint32_t process = process_of(caller);
    if (process == 0 || os.changers.size() >= 64) {
        os.anyone = true;
        os.changers.clear();
        return;
    }
    os.changers.emplace_back(caller, process);
}

struct Checkpoints::Node {
    InodeNo ino = 0;
    InodeNo parent = 0;
    std::string name;
    bool is_dir = false;
    bool readonly = false;  // the .versions tree
    bool linked = true;     // false once unlinked or replaced
    std::map<std::string, InodeNo, std::less<>> children;
    std::shared_ptr<Version> version;  // files: the published content, if any
    std::shared_ptr<OpenState> open;   // files: present while open for writing
    mode_t mode = 0644;
    std::int64_t mtime_ns = 0;
    XattrMap xattrs;  // user.* of the current content
};

struct Checkpoints::Handle {
    InodeNo ino = 0;
    bool writable = false;  // holds a writer reference (end_write on release)
    std::shared_ptr<OpenState> open;
};

Checkpoints::Checkpoints(ObjectStore& store, Fetcher& fetcher, CheckpointOptions options, InodeNo root_ino)
    : store_(store), fetcher_(fetcher), options_(std::move(options)), root_ino_(root_ino), writer_(random_writer_id()) {
    auto root = std::make_unique<Node>();
    root->ino = root_ino;
    root->parent = kRootIno;
    root->is_dir = true;
    root->mode = 0755;
    root->mtime_ns = options_.mount_time_ns;
    nodes_.emplace(root_ino, std::move(root));
    Node& versions = new_node(node(root_ino), std::string(kVersionsDir), true, 0555);
    versions.readonly = true;
    versions_ino_ = versions.ino;
}

Checkpoints::~Checkpoints() = default;

Result<std::unique_ptr<Checkpoints>> Checkpoints::open(ObjectStore& store, Fetcher& fetcher,
                                                       CheckpointOptions options, InodeNo root_ino) {
    auto spool = Spool::open(options.spool_dir, options.spool_size, options.block_size);
    if (!spool) return std::move(spool).error();
    std::unique_ptr<Checkpoints> c(new Checkpoints(store, fetcher, std::move(options), root_ino));
    c->spool_ = std::move(*spool);
    auto resumed = c->resume_orphans();
    if (!resumed) return std::move(resumed).error();
    auto loaded = c->load();
    if (!loaded) return std::move(loaded).error();
    return c;
}

// ---- tree helpers (tree_mutex_ held) ----

Checkpoints::Node* Checkpoints::find(InodeNo ino) {
    auto it = nodes_.find(ino);
    return it == nodes_.end() ? nullptr : it->second.get();
}

Checkpoints::Node& Checkpoints::node(InodeNo ino) {
    Node* n = find(ino);
    if (n == nullptr) {
        std::fprintf(stderr, "shelbyfs: broken invariant: unknown checkpoint inode %llu\n",
                     static_cast<unsigned long long>(ino));
        std::abort();
    }
    return *n;
}

Checkpoints::Node* Checkpoints::child(Node& dir, std::string_view name) {
    auto it = dir.children.find(name);
    return it == dir.children.end() ? nullptr : find(it->second);
}

std::string Checkpoints::path_of(const Node& n) const {
    std::vector<const std::string*> parts;
    const Node* cur = &n;
    while (cur->ino != root_ino_) {
        parts.push_back(&cur->name);
        cur = nodes_.at(cur->parent).get();
    }
    std::string out;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) out = join(out, **it);
    return out;
}

bool Checkpoints::in_versions(const Node& n) const { return n.readonly; }

Checkpoints::Node& Checkpoints::new_node(Node& parent, std::string name, bool is_dir, mode_t mode) {
    auto n = std::make_unique<Node>();
    n->ino = next_ino_++;
    n->parent = parent.ino;
    n->name = std::move(name);
    n->is_dir = is_dir;
    n->readonly = parent.readonly;
    n->mode = mode & 07777;
    n->mtime_ns = is_dir ? options_.mount_time_ns : now_ns();
    Node& ref = *n;
    parent.children.emplace(ref.name, ref.ino);
    nodes_.emplace(ref.ino, std::move(n));
    return ref;
}

// Unlink from the namespace. The node itself stays (the kernel may still
// hold its inode number, and open handles still read it).
void Checkpoints::detach(Node& n) {
    if (!n.linked) return;
    Node* p = find(n.parent);
    if (p != nullptr) p->children.erase(n.name);
    n.linked = false;
}

Attr Checkpoints::attr_of(const Node& n) const {
    Attr a;
    a.ttl = options_.ttl_seconds;
    a.st.st_ino = n.ino;
    a.st.st_uid = options_.uid;
    a.st.st_gid = options_.gid;
    std::int64_t t = n.mtime_ns;
    a.st.st_mtim = {static_cast<time_t>(t / 1'000'000'000), static_cast<long>(t % 1'000'000'000)};
    a.st.st_ctim = a.st.st_mtim;
    a.st.st_atim = a.st.st_mtim;
    // cp and stdio size their buffers by it: 1 MiB writes, one request each.
    a.st.st_blksize = 1024 * 1024;
    if (n.is_dir) {
        a.st.st_mode = S_IFDIR | (n.readonly ? 0555 : n.mode);
        nlink_t subdirs = 0;
        for (const auto& [name, ino] : n.children) subdirs += nodes_.at(ino)->is_dir ? 1 : 0;
        a.st.st_nlink = 2 + subdirs;
        a.st.st_size = 4096;
    } else {
        std::uint64_t size = n.open ? n.open->size.load() : n.version ? n.version->object.size : 0;
        a.st.st_mode = S_IFREG | (n.readonly ? 0444 : n.mode);
        a.st.st_nlink = n.linked ? 1 : 0;
        a.st.st_size = static_cast<off_t>(size);
        a.st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
    }
    return a;
}

// The node at `path` under the checkpoints root; with create_dirs, missing
// directories on the way (and the last component) are created as directories.
Checkpoints::Node* Checkpoints::walk(std::string_view path, bool create_dirs) {
    Node* cur = &node(root_ino_);
    std::size_t start = 0;
    while (start <= path.size() && !path.empty()) {
        std::size_t slash = path.find('/', start);
        std::string_view part = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
        if (!cur->is_dir) return nullptr;
        Node* next = child(*cur, part);
        if (next == nullptr) {
            if (!create_dirs) return nullptr;
            next = &new_node(*cur, std::string(part), true, 0755);
        }
        cur = next;
        if (slash == std::string_view::npos) break;
        start = slash + 1;
    }
    return cur;
}

void Checkpoints::add_version(const std::string& path, const std::shared_ptr<Version>& v) {
    Node* dir = &node(versions_ino_);
    std::size_t start = 0;
    for (;;) {
        std::size_t slash = path.find('/', start);
        std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
        Node* next = child(*dir, part);
        if (next == nullptr) next = &new_node(*dir, part, true, 0555);
        if (!next->is_dir) {
            log::warn("checkpoint", "cannot list a version of \"" + path + "\" under .versions: name clash");
            return;
        }
        dir = next;
        if (slash == std::string::npos) break;
        start = slash + 1;
    }
    std::string name = version_name(v->time_ns, v->object.hash);
    std::string unique = name;
    for (int i = 2; dir->children.count(unique) != 0; ++i) unique = name + "-" + std::to_string(i);
    Node& f = new_node(*dir, unique, false, 0444);
    f.version = v;
    f.mtime_ns = v->mtime_ns;
}

std::shared_ptr<Checkpoints::Version> Checkpoints::make_version(const IndexOp& put, std::int64_t time_ns) const {
    auto v = std::make_shared<Version>();
    v->object = put.object;
    v->time_ns = time_ns;
    v->mode = put.mode;
    v->mtime_ns = put.mtime_ns;
    v->xattrs = put.xattrs;
    return v;
}

IndexOp Checkpoints::put_op(const Node& n, const std::string& path, const ObjectRef& object) const {
    IndexOp op;
    op.kind = IndexOp::Kind::Put;
    op.path = path;
    op.object = object;
    op.mode = n.mode;
    op.mtime_ns = n.mtime_ns;
    op.xattrs = n.xattrs;
    return op;
}

IndexOp Checkpoints::meta_op(const Node& n, const std::string& path) const {
    IndexOp op = put_op(n, path, n.version->object);
    op.kind = IndexOp::Kind::Meta;
    op.object.blocks.clear();
    return op;
}

// Replay one recorded change. Records come from any writer, so conflicts
// (a put under a path that is a directory, ...) are skipped with a warning.
void Checkpoints::apply(const IndexOp& op, std::int64_t time_ns) {
    std::string parent = parent_of(op.path);
    std::string name = base_of(op.path);
    if (op.path == kVersionsDir || op.path.rfind(std::string(kVersionsDir) + "/", 0) == 0) {
        log::warn("checkpoint", "index: ignoring a change under the reserved .versions: " + op.path);
        return;
    }
    auto conflict = [&](const char* what) {
        log::warn("checkpoint", "index: skipping a change of \"" + op.path + "\": " + what);
    };
    switch (op.kind) {
        case IndexOp::Kind::Put: {
            Node* dir = walk(parent, true);
            if (dir == nullptr || !dir->is_dir) return conflict("a parent is a file");
            Node* n = child(*dir, name);
            if (n != nullptr && n->is_dir) return conflict("it is a directory");
            if (n == nullptr) n = &new_node(*dir, name, false, op.mode);
            n->version = make_version(op, time_ns);
            n->mode = op.mode;
            n->mtime_ns = op.mtime_ns;
            n->xattrs = op.xattrs;
            add_version(op.path, n->version);
            return;
        }
        case IndexOp::Kind::Meta: {
            Node* n = walk(op.path, false);
            if (n == nullptr || n->is_dir || !n->version || !(n->version->object.hash == op.object.hash)) return;
            n->version->mode = n->mode = op.mode;
            n->version->mtime_ns = n->mtime_ns = op.mtime_ns;
            n->version->xattrs = n->xattrs = op.xattrs;
            return;
        }
        case IndexOp::Kind::Unlink: {
            Node* n = walk(op.path, false);
            if (n != nullptr && !n->is_dir) detach(*n);
            return;
        }
        case IndexOp::Kind::Mkdir: {
            Node* n = walk(op.path, true);
            if (n == nullptr || !n->is_dir) return conflict("a file is in the way");
            n->mode = op.mode;
            return;
        }
        case IndexOp::Kind::Rmdir: {
            Node* n = walk(op.path, false);
            if (n != nullptr && n->is_dir && n->children.empty()) detach(*n);
            return;
        }
    }
}

std::uint32_t Checkpoints::object_of(Version& v) {
    if (v.fetcher_object != kNoObject) return v.fetcher_object;
    std::string hex = v.object.hash.hex();
    auto it = objects_by_hash_.find(hex);
    if (it == objects_by_hash_.end()) {
        ObjectSpec spec{"checkpoint object " + hex, store_.location(object_key(v.object.hash)), v.object.size,
                        v.object.block_size, v.object.blocks};
        it = objects_by_hash_.emplace(hex, fetcher_.add_object(std::move(spec))).first;
    }
    v.fetcher_object = it->second;
    return v.fetcher_object;
}

// ---- store I/O (no tree_mutex_ held) ----

IndexRecord Checkpoints::next_record(std::vector<IndexOp> ops) {
    IndexRecord r;
    {
        std::lock_guard lock(record_mutex_);
        last_record_ns_ = std::max(now_ns(), last_record_ns_ + 1);
        r.time_ns = last_record_ns_;
        r.seq = ++seq_;
    }
    r.writer = writer_;
    r.ops = std::move(ops);
    return r;
}

Result<void> Checkpoints::write_record(const IndexRecord& record) {
    std::string json = record.to_json();
    auto w = store_.put_bytes(record.key(), json);
    if (!w) {
        // The PUT may have landed before the failure (a timeout after the
        // server stored it): then the record is in, and saying EIO would lie.
        auto there = store_.head(record.key());
        if (!there || *there != json.size())
            return make_error(w.error().code, "writing index record " + record.key() + ": " + w.error().message);
    }
    records_.fetch_add(1);
    return {};
}

Result<void> Checkpoints::upload(const ObjectRef& object, const std::string& data_path) {
    return store_object(
        object, [&](const std::string& key) { return store_.put_file(key, data_path); }, [] {});
}

// Make objects/<hash> hold `object`: nothing to do if it is already stored
// with the right size; otherwise `place` puts the bytes under the key (a
// wrong size there is damage, replaced), and the size is verified. `discard`
// runs when the bytes that `place` would use are not needed or it failed.
// `absent`, if given, is set when the store did not have the object.
Result<void> Checkpoints::store_object(const ObjectRef& object,
                                       const std::function<Result<void>(const std::string& key)>& place,
                                       const std::function<void()>& discard, bool* absent) {
    std::string key = object_key(object.hash);
    auto existing = store_.head(key);
    if (absent != nullptr) *absent = !existing && existing.error().code == Errc::NotFound;
    if (existing && *existing == object.size) {
        discard();
        deduplicated_.fetch_add(1);
        return {};
    }
    if (!existing && existing.error().code != Errc::NotFound) {
        discard();
        return std::move(existing).error();
    }
    if (existing)
        log::warn("checkpoint", store_.location(key) + " has " + std::to_string(*existing) + " bytes, not " +
                                    std::to_string(object.size) + ": replacing the damaged object");
    if (auto put = place(key); !put) {
        discard();
        return put;
    }
    return verify_stored(object, key);
}

// After the bytes were placed under `key`: the store must report their size.
Result<void> Checkpoints::verify_stored(const ObjectRef& object, const std::string& key) {
    auto check = store_.head(key);
    if (!check) return make_error(check.error().code, "verifying the upload of " + key + ": " + check.error().message);
    if (*check != object.size)
        return make_error(Errc::Integrity, "verifying the upload of " + key + ": the store has " +
                                               std::to_string(*check) + " bytes, " + std::to_string(object.size) +
                                               " were sent");
    uploads_.fetch_add(1);
    upload_bytes_.fetch_add(object.size);
    return {};
}

// A stream starts at a write that ends at the end of a file holding at least
// kStreamFrom bytes (below that the upload at close is short anyway, and the
// temporary name costs a MOVE); it sends the spool file as it is, then
// follows writes that append. Called under open.mutex.
void Checkpoints::follow_with_stream(OpenState& open, std::uint64_t offset, std::size_t size) {
    constexpr std::uint64_t kStreamFrom = 8 << 20;
    if (open.no_stream) return;
    if (open.stream) {
        if (offset != open.streamed) {
            stop_stream(open);  // bytes already sent may be changing
            return;
        }
        open.streamed += size;
        open.stream->extend(open.streamed);
        return;
    }
    const std::uint64_t end = open.file->size();
    if (offset + size != end || end < kStreamFrom) return;
    open.stream_key = std::string(kUploadsPrefix) + writer_ + "-" + std::to_string(stream_seq_.fetch_add(1) + 1);
    // Noted first, so that the temporary object is deleted by the next mount
    // should this one die before renaming it.
    auto note = spool_->note_stream(open.stream_key);
    if (!note) {
        log::warn("checkpoint", "not streaming (the upload waits for close): " + note.error().message);
        open.no_stream = true;
        return;
    }
    open.stream = store_.begin_stream(open.stream_key, open.file->path());
    if (!open.stream) {
        open.no_stream = true;
        return;
    }
    open.stream_note = std::move(note).value();
    open.streamed = end;
    open.stream->extend(end);
}

// Abandon the stream (its PUT never completes, so nothing appears under its
// key on a WebDAV server); the file is uploaded whole at close.
void Checkpoints::stop_stream(OpenState& open) {
    open.stream.reset();
    open.stream_note.reset();
    open.no_stream = true;
}

// Best effort: a leftover temporary object is garbage, not damage. If it
// cannot be deleted, its note is kept (`note` may be null): the spool then
// outlives this mount, and the next mount that uses it deletes the object.
void Checkpoints::discard_stream_object(const std::string& key, std::unique_ptr<StreamNote>& note) {
    auto r = store_.remove(key);
    if (r || r.error().code == Errc::NotFound) return;
    log::warn("checkpoint", "cannot delete a temporary upload (left for the next mount): " + r.error().message);
    if (note) note->keep();
}

// Complete the stream and give its object the content-addressed name. Any
// failure leaves the caller to upload from the spool (the usual path).
Result<void> Checkpoints::finish_stream(OpenState& open, const ObjectRef& object) {
    // Forgotten on return (declared first, so after the stream is gone): by
    // then the temporary object is renamed or deleted.
    std::unique_ptr<StreamNote> note = std::move(open.stream_note);
    std::unique_ptr<StreamingPut> stream = std::move(open.stream);
    open.no_stream = true;  // later saves of this open file upload at close
    const std::string temp = open.stream_key;
    if (open.streamed != object.size) return make_error(Errc::Io, "the stream did not carry the whole file");
    if (auto sent = stream->finish(object.size); !sent) {
        // The server may have taken the whole body even so (an answer that
        // timed out): delete what might be there.
        discard_stream_object(temp, note);
        return sent;
    }
    stream.reset();
    // A new object (the usual case) takes one round trip less than
    // store_object's HEAD-then-MOVE: a MOVE that may not replace, so the
    // server itself keeps an object that is already there. When that MOVE
    // fails (the object is there, or the server refused the request),
    // store_object decides as usual: dedupe, or replace a damaged object.
    const std::string key = object_key(object.hash);
    Result<void> stored = make_error(Errc::NotSupported, "MOVE without replacing is refused by this store");
    const bool try_no_replace = no_replace_moves_.load();
    if (try_no_replace) stored = store_.move(temp, key, MoveMode::NoReplace);
    if (stored) {
        if (try_no_replace) no_replace_refusals_ = 0;
        stored = verify_stored(object, key);
    } else {
        const Errc refused = stored.error().code;
        if (try_no_replace)
            log::debug("checkpoint", "MOVE without replacing did not place " + key + " (already stored?): " +
                                         stored.error().message);
        bool absent = false;
        stored = store_object(
            object, [&](const std::string& k) { return store_.move(temp, k, MoveMode::Replace); },
            [&] { discard_stream_object(temp, note); }, &absent);
        // It was not there, yet the MOVE that may not replace was answered
        // with an error status and the one that may replace worked: the
        // server refuses "Overwrite: F". Twice in a row (not a passing
        // failure), and later closes stop paying for the refused request.
        if (stored && absent && try_no_replace && refused == Errc::HttpStatus && ++no_replace_refusals_ == 2 &&
            no_replace_moves_.exchange(false))
            log::info("checkpoint", store_.describe() + " refused a MOVE with \"Overwrite: F\"; streamed uploads "
                                    "check with HEAD before they MOVE from now on");
    }
    if (stored) streamed_.fetch_add(1);
    return stored;
}

// Finish the uploads a dead mount journaled. Each journal holds the exact
// record (key included) the dead mount was about to write, so finishing it
// keeps its place in time: a later unlink or rename still wins, and a record
// that did land before the crash is not written twice.
Result<void> Checkpoints::resume_orphans() {
    auto orphans = spool_->claim_orphans();
    for (const Spool::Orphan& o : orphans) {
        if (o.record.ops.size() != 1 || o.record.ops[0].kind != IndexOp::Kind::Put) {
            log::error("checkpoint", "dropping a malformed pending upload " + o.journal_path);
            spool_->drop({o.data_path, o.journal_path});
            continue;
        }
        const IndexOp& op = o.record.ops[0];
        std::uint64_t size = 0;
        auto h = hash_file(o.data_path, &size);
        if (!h || !(*h == op.object.hash) || size != op.object.size) {
            log::error("checkpoint", "dropping the pending upload of \"" + op.path + "\": its spooled data " +
                                         (h ? "does not match its hash" : h.error().message));
            spool_->drop({o.data_path, o.journal_path});
            continue;
        }
        auto up = upload(op.object, o.data_path);
        if (up) {
            auto landed = store_.head(o.record.key());
            if (!landed) up = write_record(o.record);
        }
        if (!up) {
            log::warn("checkpoint", "pending upload of \"" + op.path + "\" failed again (kept for the next mount): " +
                                        up.error().message);
            continue;
        }
        log::info("checkpoint", "resumed the pending upload of \"" + op.path + "\" (" + op.object.hash.hex() + ")");
        spool_->drop({o.data_path, o.journal_path});
    }
    // Temporary objects of streams the dead mounts never renamed. Only keys
    // a stream could have written are deleted, whatever a damaged note says.
    for (const Spool::OrphanStream& s : spool_->orphan_streams()) {
        if (!is_stream_key(s.key)) {
            log::error("checkpoint", "ignoring a damaged stream note " + s.note_path);
            spool_->drop_stream(s);
            continue;
        }
        auto gone = store_.remove(s.key);
        // NotSupported: a store that cannot delete cannot have streamed either.
        if (gone || gone.error().code == Errc::NotFound || gone.error().code == Errc::NotSupported) {
            if (gone) log::info("checkpoint", "deleted " + s.key + ", the temporary object of a mount that died");
            spool_->drop_stream(s);
        } else {
            log::warn("checkpoint", "cannot delete " + s.key + " left by a mount that died (kept for the next mount): " +
                                        gone.error().message);
        }
    }
    spool_->release_orphans();
    return {};
}

Result<void> Checkpoints::load() {
    auto keys = store_.list(std::string(kIndexPrefix));
    if (!keys) return make_error(keys.error().code, "checkpoint store " + store_.describe() + ": cannot list " +
                                                        std::string(kIndexPrefix) + ": " + keys.error().message);
    std::vector<std::string> names;
    for (const std::string& k : *keys)
        if (k.size() > 5 && k.compare(k.size() - 5, 5, ".json") == 0) names.push_back(k);
    std::sort(names.begin(), names.end());
    std::vector<Result<std::string>> bodies(names.size(), make_error(Errc::Internal, "not fetched"));
    std::size_t width = static_cast<std::size_t>(std::max(1, options_.load_parallelism));
    for (std::size_t start = 0; start < names.size(); start += width) {
        std::vector<std::future<Result<std::string>>> batch;
        for (std::size_t i = start; i < std::min(names.size(), start + width); ++i)
            batch.push_back(std::async(std::launch::async,
                                       [this, key = std::string(kIndexPrefix) + names[i]] { return store_.get(key); }));
        for (std::size_t i = 0; i < batch.size(); ++i) bodies[start + i] = batch[i].get();
    }
    std::lock_guard lock(tree_mutex_);
    std::size_t applied = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
        std::string key = std::string(kIndexPrefix) + names[i];
        if (!bodies[i]) {
            return make_error(bodies[i].error().code, "checkpoint store " + store_.describe() + ": cannot read " +
                                                          key + ": " + bodies[i].error().message);
        }
        auto rec = IndexRecord::parse(*bodies[i], store_.location(key));
        if (!rec) {
            log::error("checkpoint", "skipping a damaged index record: " + rec.error().message);
            continue;
        }
        for (const IndexOp& op : rec->ops) apply(op, rec->time_ns);
        ++applied;
    }
    log::info("checkpoint", "loaded " + std::to_string(applied) + " index records from " + store_.describe());
    return {};
}

// Publish the spooled content of `ino` (caller holds open.mutex).
Result<void> Checkpoints::publish(InodeNo ino, OpenState& open) {
    if (open.failed) return make_error(Errc::Io, "an earlier write or close of this file failed; it was not saved");
    if (!open.dirty) return {};
    std::string path;
    auto fail = [&](Error e) -> Result<void> {
        failures_.fetch_add(1);
        log::error("checkpoint", "cannot save \"" + path + "\": " + e.message);
        if (e.code != Errc::NoSpace) e.code = Errc::Io;
        return e;
    };
    auto ref = open.file->finish_hash();
    // The op as it would be recorded now; rebuilt under ns_mutex_ after the
    // upload, since a rename or metadata change may come in between.
    auto current_op = [&]() -> std::optional<IndexOp> {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (!n.linked) return std::nullopt;  // unlinked while open: nothing to publish
        path = path_of(n);
        return put_op(n, path, *ref);
    };
    if (!ref) return fail(std::move(ref).error());
    std::optional<IndexOp> op = current_op();
    if (!op) {
        open.dirty = false;
        return {};
    }
    // Journal the upload with the record that will name it, so a crash
    // mid-upload is finished by the next mount.
    auto ticket = spool_->journal(*open.file, next_record({*op}));
    if (!ticket) return fail(std::move(ticket).error());
    Result<void> up = make_error(Errc::Io, "not streamed");
    if (open.stream) {
        up = finish_stream(open, *ref);
        if (!up)
            log::info("checkpoint", "uploading \"" + path + "\" again from the spool: " + up.error().message);
    }
    if (!up) up = upload(*ref, open.file->path());
    if (!up) {
        spool_->drop(*ticket);
        return fail(std::move(up).error());
    }
    std::lock_guard ns(ns_mutex_);
    op = current_op();
    if (!op) {
        spool_->drop(*ticket);
        open.dirty = false;
        return {};
    }
    IndexRecord record = next_record({*op});
    auto j = spool_->rejournal(*ticket, record);
    if (j) j = write_record(record);
    if (!j) {
        spool_->drop(*ticket);
        return fail(std::move(j).error());
    }
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        n.version = make_version(*op, record.time_ns);
        add_version(path, n.version);
    }
    open.dirty = false;
    open.changers.clear();  // what changes next is recorded afresh
    open.anyone = false;
    spool_->drop(*ticket);
    log::debug("checkpoint", "saved \"" + path + "\" as " + object_key(ref->hash) + " (" +
                                 std::to_string(ref->size) + " bytes)");
    return {};
}

// Record the current mode, mtime and xattrs of `ino`'s saved version (the
// next save carries them too). Caller holds ns_mutex_, so a save running at
// the same time either already included them or has published its version.
Result<void> Checkpoints::record_meta_locked(InodeNo ino) {
    IndexOp op;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (!n.version || !n.linked) return {};
        op = meta_op(n, path_of(n));
    }
    IndexRecord record = next_record({op});
    auto w = write_record(record);
    if (!w) {
        failures_.fetch_add(1);
        log::error("checkpoint", "cannot record metadata of \"" + op.path + "\": " + w.error().message);
        return make_error(Errc::Io, w.error().message);
    }
    std::lock_guard lock(tree_mutex_);
    Node& n = node(ino);
    if (n.version && n.version->object.hash == op.object.hash) {
        n.version->mode = op.mode;
        n.version->mtime_ns = op.mtime_ns;
        n.version->xattrs = op.xattrs;
    }
    return {};
}

// Make `ino` writable: attach (or join) its spool file, copying the published
// content in unless it is being truncated.
Result<std::shared_ptr<Checkpoints::OpenState>> Checkpoints::begin_write(InodeNo ino, bool truncate,
                                                                        CallerId caller) {
    // Join the file's current writer, if any; otherwise copy the published
    // content into a fresh spool file (outside the lock) and attach it,
    // unless another opener attached one meanwhile.
    std::shared_ptr<OpenState> joined;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (n.open) {
            ++n.open->writers;
            joined = n.open;
        }
    }
    if (!joined) {
        auto os = materialize(ino, truncate);
        if (!os) return os;
        if ((*os)->dirty) note_change(**os, caller);  // truncated, or never saved: a change
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (!n.open) {
            n.open = *os;
            n.open->writers = 1;
            return os;
        }
        ++n.open->writers;
        joined = n.open;
    }
    if (truncate) {
        std::lock_guard fl(joined->mutex);
        stop_stream(*joined);
        auto t = joined->file->truncate(0);
        if (t) {
            joined->size = 0;
            joined->dirty = true;
            note_change(*joined, caller);
        } else {
            end_write(ino, joined);
            return std::move(t).error();
        }
    }
    return joined;
}

Result<std::shared_ptr<Checkpoints::OpenState>> Checkpoints::materialize(InodeNo ino, bool truncate) {
    auto os = std::make_shared<OpenState>();
    auto file = spool_->create_file();
    if (!file) return std::move(file).error();
    os->file = std::move(*file);
    std::uint32_t object = kNoObject;
    std::uint64_t size = 0;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (n.version && !truncate) {
            object = object_of(*n.version);
            size = n.version->object.size;
        }
        os->dirty = truncate || !n.version;
    }
    if (object != kNoObject && size > 0) {
        std::string buf(static_cast<std::size_t>(std::min<std::uint64_t>(size, 1 << 20)), '\0');
        for (std::uint64_t off = 0; off < size;) {
            auto n = fetcher_.read(object, off, buf.data(), buf.size());
            if (!n) return std::move(n).error();
            if (*n == 0) return make_error(Errc::Io, "checkpoint object ended early while copying it for writing");
            auto w = os->file->write(off, buf.data(), *n);
            if (!w) return std::move(w).error();
            off += *n;
        }
    }
    os->size = os->file->size();
    return os;
}

void Checkpoints::end_write(InodeNo ino, const std::shared_ptr<OpenState>& os) {
    std::lock_guard ns(ns_mutex_);
    std::lock_guard lock(tree_mutex_);
    if (--os->writers > 0) return;
    Node& n = node(ino);
    if (n.open == os) n.open.reset();
    if (os->dirty && !os->failed && n.linked) {
        std::string path = path_of(n);
        if (n.version) {
            log::error("checkpoint", "\"" + path + "\": discarding changes that were not saved; it keeps its last "
                                                   "saved content");
            revert(n);
        } else {
            log::error("checkpoint", "\"" + path + "\": removing a file whose content was never saved");
            drop_name(n);
        }
    }
}

// A write or close could not save `os`: the name must not show unsaved bytes
// from now on. A never-saved file loses its name; a saved one shows its saved
// content. Handles still open on `os` keep it, and their closes fail too.
void Checkpoints::abandon(InodeNo ino, OpenState& os) {
    stop_stream(os);  // callers hold os.mutex
    std::lock_guard ns(ns_mutex_);
    std::lock_guard lock(tree_mutex_);
    os.failed = true;
    Node& n = node(ino);
    if (n.open.get() == &os) n.open.reset();
    if (!n.linked) return;
    if (!n.version) drop_name(n);
    else revert(n);
}

// Show the saved version again (content, mode, mtime, xattrs).
void Checkpoints::revert(Node& n) {
    n.mode = n.version->mode;
    n.mtime_ns = n.version->mtime_ns;
    n.xattrs = n.version->xattrs;
    if (invalidate_) invalidate_(n.ino, 0, {});
}

// Detach a name the kernel did not remove itself, and tell it to forget it.
void Checkpoints::drop_name(Node& n) {
    InodeNo parent = n.parent;
    std::string name = n.name;
    detach(n);
    if (invalidate_) invalidate_(n.ino, parent, name);
}

Checkpoints::Handle Checkpoints::handle(FileHandle fh) {
    std::lock_guard lock(tree_mutex_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) {
        std::fprintf(stderr, "shelbyfs: broken invariant: unknown file handle %llu\n",
                     static_cast<unsigned long long>(fh));
        std::abort();
    }
    return *it->second;
}

// ---- operations ----

Result<Attr> Checkpoints::lookup(InodeNo parent, std::string_view name) {
    std::lock_guard lock(tree_mutex_);
    Node& dir = node(parent);
    if (!dir.is_dir) return make_error(Errc::NotDirectory, "lookup in a file");
    Node* c = child(dir, name);
    if (c == nullptr) return make_error(Errc::NotFound, "no such entry");
    return attr_of(*c);
}

Result<Attr> Checkpoints::getattr(InodeNo ino) {
    std::lock_guard lock(tree_mutex_);
    return attr_of(node(ino));
}

Result<std::vector<DirEntry>> Checkpoints::readdir(InodeNo ino) {
    std::lock_guard lock(tree_mutex_);
    Node& dir = node(ino);
    if (!dir.is_dir) return make_error(Errc::NotDirectory, "readdir of a file");
    std::vector<DirEntry> out;
    out.reserve(dir.children.size() + 2);
    out.push_back({".", ino, S_IFDIR});
    out.push_back({"..", dir.parent, S_IFDIR});
    for (const auto& [name, child_ino] : dir.children)
        out.push_back({name, child_ino, static_cast<mode_t>(nodes_.at(child_ino)->is_dir ? S_IFDIR : S_IFREG)});
    return out;
}

Result<void> Checkpoints::opendir(InodeNo ino) {
    std::lock_guard lock(tree_mutex_);
    if (!node(ino).is_dir) return make_error(Errc::NotDirectory, "opendir of a file");
    return {};
}

Result<FileHandle> Checkpoints::open(InodeNo ino, int flags, CallerId caller) {
    bool write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (n.is_dir) return make_error(Errc::IsDirectory, "open of a directory");
        if (write && n.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
    }
    auto h = std::make_unique<Handle>();
    h->ino = ino;
    if (write) {
        auto os = begin_write(ino, (flags & O_TRUNC) != 0, caller);
        if (!os) return std::move(os).error();
        h->writable = true;
        h->open = std::move(*os);
    }
    std::lock_guard lock(tree_mutex_);
    FileHandle fh = next_handle_++;
    handles_.emplace(fh, std::move(h));
    return fh;
}

Result<std::pair<Attr, FileHandle>> Checkpoints::create(InodeNo parent, std::string_view name, mode_t mode,
                                                        int flags, CallerId caller) {
    auto ok = check_name(name);
    if (!ok) return std::move(ok).error();
    auto file = spool_->create_file();  // disk I/O: before taking the locks
    if (!file) return std::move(file).error();
    InodeNo ino = 0;
    {
        std::lock_guard ns(ns_mutex_);
        std::unique_lock lock(tree_mutex_);
        Node& dir = node(parent);
        if (!dir.is_dir) return make_error(Errc::NotDirectory, "create in a file");
        if (dir.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        if (Node* existing = child(dir, name)) {
            if ((flags & O_EXCL) != 0) return make_error(Errc::Exists, "exists");
            if (existing->is_dir) return make_error(Errc::IsDirectory, "a directory");
            ino = existing->ino;
        } else {
            Node& n = new_node(dir, std::string(name), false, mode & 07777);
            auto os = std::make_shared<OpenState>();
            os->file = std::move(*file);
            os->dirty = true;  // a new file is saved on close even if empty
            note_change(*os, caller);
            os->writers = 1;
            n.open = os;
            auto h = std::make_unique<Handle>();
            h->ino = n.ino;
            h->writable = true;
            h->open = std::move(os);
            FileHandle fh = next_handle_++;
            handles_.emplace(fh, std::move(h));
            return std::make_pair(attr_of(n), fh);
        }
    }
    auto fh = open(ino, flags, caller);
    if (!fh) return std::move(fh).error();
    std::lock_guard lock(tree_mutex_);
    return std::make_pair(attr_of(node(ino)), *fh);
}

Result<std::size_t> Checkpoints::read(FileHandle fh, std::uint64_t offset, std::size_t size, char* buffer) {
    auto slices = read_slices(fh, offset, size);
    if (!slices) return std::move(slices).error();
    return copy_slices(*slices, buffer);
}

Result<ReadSlices> Checkpoints::read_slices(FileHandle fh, std::uint64_t offset, std::size_t size) {
    Handle h = handle(fh);
    std::shared_ptr<OpenState> os;
    std::uint32_t object = kNoObject;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(h.ino);
        os = n.open;
        if (!os && n.version) object = object_of(*n.version);
    }
    if (os) {
        std::uint64_t end = os->size.load();
        if (offset >= end) return ReadSlices{};
        std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(size, end - offset));
        auto buffer = std::make_shared<std::string>(want, '\0');
        auto n = os->file->read(offset, buffer->data(), buffer->size());
        if (!n) return std::move(n).error();
        const char* data = buffer->data();
        return ReadSlices{ReadSlice{std::move(buffer), data, *n}};
    }
    if (object == kNoObject) return ReadSlices{};
    return fetcher_.read_slices(object, offset, size);
}

Result<std::size_t> Checkpoints::write(FileHandle fh, std::uint64_t offset, const char* data, std::size_t size,
                                       CallerId caller) {
    Handle h = handle(fh);
    if (!h.writable) return make_error(Errc::Permission, "write to a file opened read-only");
    {
        std::lock_guard fl(h.open->mutex);
        if (h.open->failed) return make_error(Errc::Io, "an earlier write or close of this file failed");
        auto w = h.open->file->write(offset, data, size);
        if (!w) {
            // Part of it may be on disk: this content must never be saved.
            log::error("checkpoint", "write failed, the file will not be saved: " + w.error().message);
            abandon(h.ino, *h.open);
            return std::move(w).error();
        }
        h.open->size = h.open->file->size();
        h.open->dirty = true;
        note_change(*h.open, caller);
        follow_with_stream(*h.open, offset, size);
    }
    std::lock_guard lock(tree_mutex_);
    node(h.ino).mtime_ns = now_ns();
    return size;
}

Result<void> Checkpoints::flush(FileHandle fh, CallerId caller) {
    Handle h = handle(fh);
    if (!h.writable) return {};
    std::lock_guard fl(h.open->mutex);
    OpenState& os = *h.open;
    if (caller != 0 && os.dirty && !os.failed && !os.anyone) {
        std::uint32_t process = process_of(caller);
        bool changed = process == 0;  // unknown: save, as before
        for (const auto& c : os.changers) {
            // A changer's thread that is gone or now in another process:
            // its id may have been reused by a writer that note_change()
            // then took for it. Save rather than guess.
            changed = changed || c.second == process || process_of(c.first) != c.second;
            if (changed) break;
        }
        if (!changed) {
            log::debug("checkpoint", "close by process " + std::to_string(process) +
                                         ", which did not change the file: saved at its writers' close");
            return {};
        }
    }
    auto r = publish(h.ino, *h.open);
    if (!r && !h.open->failed) abandon(h.ino, *h.open);
    return r;
}

// fsync(2) is per file, not per descriptor: a read-only descriptor syncs
// whatever another one wrote. A failure leaves the file as it is (fsync may
// be retried).
Result<void> Checkpoints::fsync(FileHandle fh) {
    Handle h = handle(fh);
    std::shared_ptr<OpenState> os = h.open;
    if (!os) {
        std::lock_guard lock(tree_mutex_);
        os = node(h.ino).open;
    }
    if (!os) return {};
    std::lock_guard fl(os->mutex);
    return publish(h.ino, *os);
}

void Checkpoints::release(FileHandle fh) {
    std::unique_ptr<Handle> h;
    {
        std::lock_guard lock(tree_mutex_);
        auto it = handles_.find(fh);
        if (it == handles_.end()) return;
        h = std::move(it->second);
        handles_.erase(it);
    }
    if (h->writable) end_write(h->ino, h->open);
}

Result<Attr> Checkpoints::setattr(InodeNo ino, const SetAttrRequest& req, FileHandle fh, CallerId caller) {
    bool is_dir = false;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (n.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        is_dir = n.is_dir;
    }
    if (req.size) {
        if (is_dir) return make_error(Errc::IsDirectory, "truncate of a directory");
        // ftruncate(fd) changes the content like a write: saved at close or
        // fsync. truncate(path) has no close to wait for: saved now.
        std::shared_ptr<OpenState> os;
        bool by_path = true;
        if (fh != 0) {
            Handle h = handle(fh);
            if (h.writable) {
                os = h.open;
                by_path = false;
            }
        }
        if (by_path) {
            {
                std::lock_guard lock(tree_mutex_);
                os = node(ino).open;
                if (os) ++os->writers;  // keep it attached until we are done
            }
            if (!os) {
                auto begun = begin_write(ino, *req.size == 0, caller);
                if (!begun) return std::move(begun).error();
                os = *begun;
            }
        }
        Result<void> r;
        {
            std::lock_guard fl(os->mutex);
            if (os->failed) r = make_error(Errc::Io, "an earlier write or close of this file failed");
            else {
                stop_stream(*os);
                r = os->file->truncate(*req.size);
            }
            if (r) {
                os->size = *req.size;
                os->dirty = true;
                note_change(*os, caller);
                {
                    std::lock_guard lock(tree_mutex_);
                    node(ino).mtime_ns = req.mtime_ns.value_or(now_ns());
                }
                if (by_path) r = publish(ino, *os);
            }
        }
        if (by_path) end_write(ino, os);
        if (!r) return std::move(r).error();
    }
    if (req.mode || req.mtime_ns) {
        // Under ns_mutex_: a save in progress either records these or has
        // already published the version this records them on.
        std::lock_guard ns(ns_mutex_);
        mode_t old_mode = 0;
        std::int64_t old_mtime = 0;
        bool record = false;
        {
            std::lock_guard lock(tree_mutex_);
            Node& n = node(ino);
            old_mode = n.mode;
            old_mtime = n.mtime_ns;
            if (req.mode) n.mode = *req.mode & 07777;
            if (req.mtime_ns) n.mtime_ns = *req.mtime_ns;
            record = !n.is_dir && n.version && n.linked;
        }
        if (record) {
            auto r = record_meta_locked(ino);
            if (!r) {
                std::lock_guard lock(tree_mutex_);
                node(ino).mode = old_mode;
                node(ino).mtime_ns = old_mtime;
                return std::move(r).error();
            }
        }
    }
    std::lock_guard lock(tree_mutex_);
    return attr_of(node(ino));
}

Result<Attr> Checkpoints::mkdir(InodeNo parent, std::string_view name, mode_t mode) {
    auto ok = check_name(name);
    if (!ok) return std::move(ok).error();
    std::lock_guard ns(ns_mutex_);
    IndexOp op;
    {
        std::lock_guard lock(tree_mutex_);
        Node& dir = node(parent);
        if (!dir.is_dir) return make_error(Errc::NotDirectory, "mkdir in a file");
        if (dir.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        if (child(dir, name) != nullptr) return make_error(Errc::Exists, "exists");
        op.kind = IndexOp::Kind::Mkdir;
        op.path = join(path_of(dir), name);
        op.mode = mode & 07777;
    }
    auto w = write_record(next_record({op}));
    if (!w) return make_error(Errc::Io, w.error().message);
    std::lock_guard lock(tree_mutex_);
    return attr_of(new_node(node(parent), std::string(name), true, mode & 07777));
}

Result<void> Checkpoints::unlink(InodeNo parent, std::string_view name) {
    std::lock_guard ns(ns_mutex_);
    InodeNo ino = 0;
    std::vector<IndexOp> ops;
    {
        std::lock_guard lock(tree_mutex_);
        Node& dir = node(parent);
        Node* c = child(dir, name);
        if (c == nullptr) return make_error(Errc::NotFound, "no such entry");
        if (c->is_dir) return make_error(Errc::IsDirectory, "unlink of a directory");
        if (c->readonly || dir.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        ino = c->ino;
        if (c->version) ops.push_back(IndexOp{IndexOp::Kind::Unlink, path_of(*c), {}, 0, 0, {}});
    }
    if (!ops.empty()) {
        auto w = write_record(next_record(std::move(ops)));
        if (!w) return make_error(Errc::Io, w.error().message);
    }
    std::lock_guard lock(tree_mutex_);
    detach(node(ino));
    return {};
}

Result<void> Checkpoints::rmdir(InodeNo parent, std::string_view name) {
    std::lock_guard ns(ns_mutex_);
    InodeNo ino = 0;
    IndexOp op;
    {
        std::lock_guard lock(tree_mutex_);
        Node& dir = node(parent);
        Node* c = child(dir, name);
        if (c == nullptr) return make_error(Errc::NotFound, "no such entry");
        if (!c->is_dir) return make_error(Errc::NotDirectory, "rmdir of a file");
        if (c->readonly || dir.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        if (!c->children.empty()) return make_error(Errc::NotEmpty, "directory not empty");
        ino = c->ino;
        op.kind = IndexOp::Kind::Rmdir;
        op.path = path_of(*c);
    }
    auto w = write_record(next_record({op}));
    if (!w) return make_error(Errc::Io, w.error().message);
    std::lock_guard lock(tree_mutex_);
    detach(node(ino));
    return {};
}

// The records that move `n` (at `from`) to `to`: puts and mkdirs for the new
// names in `add`, unlinks and rmdirs of the old ones in `remove` (children first).
void Checkpoints::collect_ops(Node& n, const std::string& from, const std::string& to, std::vector<IndexOp>& add,
                              std::vector<IndexOp>& remove) {
    if (n.is_dir) {
        IndexOp mk;
        mk.kind = IndexOp::Kind::Mkdir;
        mk.path = to;
        mk.mode = n.mode;
        add.push_back(mk);
        for (const auto& [name, ino] : n.children)
            collect_ops(*nodes_.at(ino), join(from, name), join(to, name), add, remove);
        IndexOp rm;
        rm.kind = IndexOp::Kind::Rmdir;
        rm.path = from;
        remove.push_back(rm);
    } else if (n.version) {
        IndexOp put = put_op(n, to, n.version->object);
        // Carry the recorded metadata of the published version, not unsaved edits.
        put.mode = n.version->mode;
        put.mtime_ns = n.version->mtime_ns;
        put.xattrs = n.version->xattrs;
        add.push_back(put);
        IndexOp rm;
        rm.kind = IndexOp::Kind::Unlink;
        rm.path = from;
        remove.push_back(rm);
    }
}

Result<void> Checkpoints::rename(InodeNo parent, std::string_view name, InodeNo new_parent,
                                 std::string_view new_name, unsigned flags) {
    if ((flags & ~static_cast<unsigned>(RENAME_NOREPLACE)) != 0)
        return make_error(Errc::InvalidArgument, "rename flags other than RENAME_NOREPLACE are not supported");
    auto ok = check_name(new_name);
    if (!ok) return std::move(ok).error();
    std::lock_guard ns(ns_mutex_);
    InodeNo src_ino = 0, dst_ino = 0;
    std::vector<IndexOp> ops;
    {
        std::lock_guard lock(tree_mutex_);
        Node& sp = node(parent);
        Node& dp = node(new_parent);
        if (!dp.is_dir) return make_error(Errc::NotDirectory, "rename into a file");
        Node* src = child(sp, name);
        if (src == nullptr) return make_error(Errc::NotFound, "no such entry");
        if (sp.readonly || dp.readonly || src->readonly || src->ino == versions_ino_)
            return make_error(Errc::ReadOnly, "versions are read-only");
        if (src->is_dir) {
            for (const Node* p = &dp; p->ino != root_ino_; p = &node(p->parent))
                if (p->ino == src->ino) return make_error(Errc::InvalidArgument, "rename of a directory into itself");
        }
        Node* dst = child(dp, new_name);
        if (dst == src) return {};
        if (dst != nullptr && (dst->readonly || dst->ino == versions_ino_))
            return make_error(Errc::ReadOnly, ".versions is read-only");
        std::string from = path_of(*src);
        std::string to = join(path_of(dp), new_name);
        if (dst != nullptr) {
            if ((flags & RENAME_NOREPLACE) != 0) return make_error(Errc::Exists, "target exists");
            if (src->is_dir && !dst->is_dir) return make_error(Errc::NotDirectory, "rename of a directory over a file");
            if (!src->is_dir && dst->is_dir) return make_error(Errc::IsDirectory, "rename of a file over a directory");
            if (dst->is_dir && !dst->children.empty()) return make_error(Errc::NotEmpty, "target directory not empty");
            dst_ino = dst->ino;
            if (dst->is_dir) ops.push_back(IndexOp{IndexOp::Kind::Rmdir, to, {}, 0, 0, {}});
            else if (dst->version && !src->version) ops.push_back(IndexOp{IndexOp::Kind::Unlink, to, {}, 0, 0, {}});
        }
        std::vector<IndexOp> add, remove;
        collect_ops(*src, from, to, add, remove);
        ops.insert(ops.end(), add.begin(), add.end());
        ops.insert(ops.end(), remove.begin(), remove.end());
        src_ino = src->ino;
    }
    std::int64_t time_ns = 0;
    if (!ops.empty()) {
        IndexRecord record = next_record(ops);
        auto w = write_record(record);
        if (!w) return make_error(Errc::Io, w.error().message);
        time_ns = record.time_ns;
    }
    std::lock_guard lock(tree_mutex_);
    if (dst_ino != 0) detach(node(dst_ino));
    Node& src = node(src_ino);
    node(src.parent).children.erase(src.name);
    src.name = std::string(new_name);
    src.parent = new_parent;
    node(new_parent).children.emplace(src.name, src.ino);
    for (const IndexOp& op : ops) {
        if (op.kind != IndexOp::Kind::Put) continue;
        Node* n = walk(op.path, false);
        if (n == nullptr || n->is_dir) continue;
        n->version = make_version(op, time_ns);
        add_version(op.path, n->version);
    }
    return {};
}

// Change a file's user xattrs with `edit` (under tree_mutex_) and record
// them on its saved version before returning; undone if that fails. Under
// ns_mutex_ for the reason given in setattr.
Result<void> Checkpoints::change_xattrs(InodeNo ino, const std::function<Result<void>(XattrMap&)>& edit) {
    std::lock_guard ns(ns_mutex_);
    XattrMap before;
    bool record = false;
    {
        std::lock_guard lock(tree_mutex_);
        Node& n = node(ino);
        if (n.readonly) return make_error(Errc::ReadOnly, "versions are read-only");
        if (n.is_dir) return make_error(Errc::NotSupported, "xattrs on checkpoint directories are not supported");
        before = n.xattrs;
        auto edited = edit(n.xattrs);
        if (!edited) {
            n.xattrs = std::move(before);
            return edited;
        }
        record = n.version && n.linked;
    }
    if (!record) return {};
    auto r = record_meta_locked(ino);
    if (!r) {
        std::lock_guard lock(tree_mutex_);
        node(ino).xattrs = std::move(before);
    }
    return r;
}

Result<void> Checkpoints::setxattr(InodeNo ino, std::string_view name, std::string_view value, int flags) {
    if (name.rfind("user.", 0) != 0)
        return make_error(Errc::NotSupported, "only user.* extended attributes are supported");
    if (name.rfind("user.shelbyfs.", 0) == 0)
        return make_error(Errc::Permission, std::string(name) + " is maintained by shelbyfs");
    if (!valid_utf8(name)) return make_error(Errc::InvalidArgument, "xattr names must be UTF-8");
    if (value.size() > kMaxXattrValue) return make_error(Errc::TooBig, "xattr value over 64 KiB");
    return change_xattrs(ino, [&](XattrMap& x) -> Result<void> {
        bool exists = x.count(std::string(name)) != 0;
        if ((flags & XATTR_CREATE) != 0 && exists) return make_error(Errc::Exists, "xattr exists");
        if ((flags & XATTR_REPLACE) != 0 && !exists) return make_error(Errc::NoData, "no such xattr");
        std::size_t total = name.size() + value.size();
        for (const auto& [k, v] : x)
            if (k != name) total += k.size() + v.size();
        if (total > kMaxXattrTotal) return make_error(Errc::NoSpace, "xattrs of one file over 256 KiB");
        x[std::string(name)] = std::string(value);
        return {};
    });
}

Result<std::string> Checkpoints::getxattr(InodeNo ino, std::string_view name) {
    std::lock_guard lock(tree_mutex_);
    Node& n = node(ino);
    if (name == kHashXattr) {
        bool clean = !(n.open && n.open->dirty);
        if (n.version && clean) return n.version->object.hash.hex();
        return make_error(Errc::NoData, "not saved yet");
    }
    const XattrMap& x = n.readonly && n.version ? n.version->xattrs : n.xattrs;
    auto it = x.find(std::string(name));
    if (it == x.end()) return make_error(Errc::NoData, "no such xattr");
    return it->second;
}

Result<std::vector<std::string>> Checkpoints::listxattr(InodeNo ino) {
    std::lock_guard lock(tree_mutex_);
    Node& n = node(ino);
    std::vector<std::string> out;
    if (n.version && !(n.open && n.open->dirty)) out.emplace_back(kHashXattr);
    const XattrMap& x = n.readonly && n.version ? n.version->xattrs : n.xattrs;
    for (const auto& [k, v] : x) out.push_back(k);
    return out;
}

Result<void> Checkpoints::removexattr(InodeNo ino, std::string_view name) {
    if (name.rfind("user.shelbyfs.", 0) == 0)
        return make_error(Errc::Permission, std::string(name) + " is maintained by shelbyfs");
    return change_xattrs(ino, [&](XattrMap& x) -> Result<void> {
        if (x.erase(std::string(name)) == 0) return make_error(Errc::NoData, "no such xattr");
        return {};
    });
}

Checkpoints::Stats Checkpoints::stats() const {
    return Stats{uploads_.load(), upload_bytes_.load(), deduplicated_.load(), streamed_.load(), records_.load(),
                 failures_.load(), spool_->used(), spool_->limit()};
}

}  // namespace shelbyfs
