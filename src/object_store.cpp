// ObjectStore implementations: LocalStore (a directory) and HttpStore (a WebDAV collection).
#include "shelbyfs/object_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>
#include <system_error>
#include <utility>

#include "shelbyfs/http_client.h"
#include "shelbyfs/log.h"
#include "shelbyfs/manifest.h"

namespace shelbyfs {

namespace {

// Marks a LocalStore temp file ("<name>.partial-<pid>-<random>"); list() hides such names.
constexpr std::string_view kPartialMarker = ".partial-";

std::string errno_text(int err) { return std::strerror(err); }

// Key text for messages: control bytes (NUL included) shown as \xNN.
std::string printable(std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            out += "\\x";
            out += kHex[u >> 4];
            out += kHex[u & 0xf];
        } else {
            out += c;
        }
    }
    return out;
}

// Why `key` is not a valid object key, or "" if it is.
std::string key_problem(std::string_view key) {
    if (key.empty()) return "empty";
    if (key.find('\0') != std::string_view::npos) return "contains a NUL byte";
    if (key.front() == '/') return "starts with '/'";
    std::size_t start = 0;
    for (;;) {
        const std::size_t slash = key.find('/', start);
        const std::string_view segment = key.substr(start, slash == std::string_view::npos ? slash : slash - start);
        if (segment.empty()) return "has an empty segment";
        if (segment == "." || segment == "..") return "has a '" + std::string(segment) + "' segment";
        if (slash == std::string_view::npos) return {};
        start = slash + 1;
    }
}

Error invalid_key(const std::string& what, const std::string& key, const std::string& base, const std::string& why) {
    return make_error(Errc::InvalidArgument,
                      "invalid " + what + " '" + printable(key) + "' for store " + base + ": " + why);
}

Result<void> check_key(const std::string& key, const std::string& base) {
    if (std::string why = key_problem(key); !why.empty()) return invalid_key("object key", key, base, why);
    return {};
}

// A list() prefix is "" or a valid key followed by '/'.
Result<void> check_prefix(const std::string& prefix, const std::string& base) {
    if (prefix.empty()) return {};
    if (prefix.back() != '/') return invalid_key("list prefix", prefix, base, "does not end in '/'");
    if (std::string why = key_problem(std::string_view(prefix).substr(0, prefix.size() - 1)); !why.empty()) {
        return invalid_key("list prefix", prefix, base, why);
    }
    return {};
}

// A name list() may return: one valid segment that is not a LocalStore temp file.
bool is_listable_name(std::string_view name) {
    return key_problem(name).empty() && name.find('/') == std::string_view::npos &&
           name.find(kPartialMarker) == std::string_view::npos;
}

std::vector<std::string> sorted_unique(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());  // char_traits<char> compares bytes as unsigned
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
}

Errc write_errc(int err) { return err == ENOSPC || err == EDQUOT ? Errc::NoSpace : Errc::Io; }

// ---- LocalStore -------------------------------------------------------------

// Owns one file descriptor.
class UniqueFd {
public:
    explicit UniqueFd(int fd = -1) : fd_(fd) {}
    ~UniqueFd() {
        if (fd_ >= 0) ::close(fd_);
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    int get() const { return fd_; }
    bool is_open() const { return fd_ >= 0; }
    // Closes now, returning close()'s errno (0 on success): a deferred write error shows up here.
    int close() {
        const int fd = std::exchange(fd_, -1);
        return fd >= 0 && ::close(fd) != 0 ? errno : 0;
    }

private:
    int fd_;
};

// Writes all of `data` to `fd`; 0 or the errno.
int write_all(int fd, const char* data, std::size_t size) {
    while (size > 0) {
        const ssize_t n = ::write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        data += n;
        size -= static_cast<std::size_t>(n);
    }
    return 0;
}

int fsync_path(const std::string& dir) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.is_open()) return errno;
    return ::fsync(fd.get()) == 0 ? 0 : errno;
}

// Copies exactly `size` bytes of `in` to `out` (both from offset 0): in-kernel
// with copy_file_range where the filesystems allow it, else pread/write through
// a 1 MiB buffer. Returns "" or the cause; `errc` says whose fault.
std::string copy_file(int in, int out, std::uint64_t size, Errc& errc) {
    std::uint64_t done = 0;
    bool kernel_copy = true;
    while (done < size && kernel_copy) {
        const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(size - done, std::uint64_t{1} << 30));
        auto in_offset = static_cast<loff_t>(done);
        const ssize_t n = ::copy_file_range(in, &in_offset, out, nullptr, chunk, 0);
        if (n > 0) {
            done += static_cast<std::uint64_t>(n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (const int err = n < 0 ? errno : 0; err == ENOSPC || err == EDQUOT || err == EIO) {
            errc = err == EIO ? Errc::Io : Errc::NoSpace;
            return "copy failed at byte " + std::to_string(done) + ": " + errno_text(err);
        } else {
            // EXDEV, ENOSYS, EOPNOTSUPP, EINVAL (unsupported pair of files), or 0
            // (some filesystems, or the source shrank): let plain reads decide.
            kernel_copy = false;
        }
    }
    if (done == size) return {};
    std::vector<char> buffer(std::size_t{1} << 20);
    while (done < size) {
        const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(size - done, buffer.size()));
        const ssize_t n = ::pread(in, buffer.data(), want, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = errno;
            errc = Errc::Io;
            if (n == 0) return "source ended at byte " + std::to_string(done) + " of " + std::to_string(size);
            return "reading the source at byte " + std::to_string(done) + " failed: " + errno_text(err);
        }
        // The destination's offset has advanced with every byte written so far.
        if (const int err = write_all(out, buffer.data(), static_cast<std::size_t>(n)); err != 0) {
            errc = write_errc(err);
            return "write failed at byte " + std::to_string(done) + ": " + errno_text(err);
        }
        done += static_cast<std::uint64_t>(n);
    }
    return {};
}

// A directory of objects: `<base>/<key>`. Each put writes a temp file beside
// the final name, fsyncs it, renames it into place and fsyncs the directory,
// so readers see no object or a complete one. Thread-safe (no mutable state
// but an atomic counter).
class LocalStore final : public ObjectStore {
public:
    explicit LocalStore(std::string base) : base_(std::move(base)) {
        std::random_device device;
        salt_ = (std::uint64_t{device()} << 32) ^ device();
    }

    std::string describe() const override { return base_; }
    std::string location(const std::string& key) const override { return join(key); }

    Result<void> put_file(const std::string& key, const std::string& path) override {
        if (auto ok = check_key(key, base_); !ok) return ok;
        // O_NONBLOCK: a FIFO must not block the open; it is rejected below.
        UniqueFd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
        if (!in.is_open()) {
            const int err = errno;
            return failure("put", key, Errc::Io, "cannot open source " + path + ": " + errno_text(err));
        }
        struct stat st {};
        if (::fstat(in.get(), &st) != 0) {
            const int err = errno;
            return failure("put", key, Errc::Io, "cannot stat source " + path + ": " + errno_text(err));
        }
        if (!S_ISREG(st.st_mode)) return failure("put", key, Errc::Io, "source " + path + " is not a regular file");
        const auto size = static_cast<std::uint64_t>(st.st_size);
        return publish(key, [&](int out) -> Result<void> {
            Errc errc = Errc::Io;
            if (std::string why = copy_file(in.get(), out, size, errc); !why.empty()) {
                return make_error(errc, "copying " + path + ": " + why);
            }
            return {};
        });
    }

    Result<void> put_bytes(const std::string& key, const std::string& bytes) override {
        if (auto ok = check_key(key, base_); !ok) return ok;
        return publish(key, [&](int out) -> Result<void> {
            if (const int err = write_all(out, bytes.data(), bytes.size()); err != 0) {
                return make_error(write_errc(err), "write failed: " + errno_text(err));
            }
            return {};
        });
    }

    Result<std::uint64_t> head(const std::string& key) override {
        if (auto ok = check_key(key, base_); !ok) return std::move(ok).error();
        struct stat st {};
        if (::stat(join(key).c_str(), &st) != 0) {
            const int err = errno;
            if (err == ENOENT || err == ENOTDIR) return failure("head", key, Errc::NotFound, "no such object");
            return failure("head", key, Errc::Io, "stat failed: " + errno_text(err));
        }
        if (!S_ISREG(st.st_mode)) return failure("head", key, Errc::NotFound, "not a regular file");
        return static_cast<std::uint64_t>(st.st_size);
    }

    Result<std::string> get(const std::string& key) override {
        if (auto ok = check_key(key, base_); !ok) return std::move(ok).error();
        UniqueFd fd(::open(join(key).c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));  // as in put_file
        if (!fd.is_open()) {
            const int err = errno;
            if (err == ENOENT || err == ENOTDIR) return failure("get", key, Errc::NotFound, "no such object");
            return failure("get", key, Errc::Io, "open failed: " + errno_text(err));
        }
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0) {
            const int err = errno;
            return failure("get", key, Errc::Io, "stat failed: " + errno_text(err));
        }
        if (!S_ISREG(st.st_mode)) return failure("get", key, Errc::NotFound, "not a regular file");
        std::string data;
        try {
            data.reserve(static_cast<std::size_t>(st.st_size));
            char buffer[65536];
            for (;;) {
                const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0) {
                    const int err = errno;
                    return failure("get", key, Errc::Io, "read failed: " + errno_text(err));
                }
                if (n == 0) break;
                data.append(buffer, static_cast<std::size_t>(n));
            }
        } catch (const std::bad_alloc&) {
            return failure("get", key, Errc::Internal, "out of memory for " + std::to_string(st.st_size) + " bytes");
        }
        return data;
    }

    Result<std::vector<std::string>> list(const std::string& prefix) override {
        if (auto ok = check_prefix(prefix, base_); !ok) return std::move(ok).error();
        const std::string dir = prefix.empty() ? base_ : join(prefix);
        DIR* d = ::opendir(dir.c_str());
        if (d == nullptr) {
            const int err = errno;
            if (err == ENOENT || err == ENOTDIR) return std::vector<std::string>{};
            return failure("list", prefix, Errc::Io, "opendir failed: " + errno_text(err));
        }
        std::vector<std::string> names;
        int err = 0;
        for (;;) {
            errno = 0;
            const dirent* entry = ::readdir(d);
            if (entry == nullptr) {
                err = errno;
                break;
            }
            const std::string_view name(entry->d_name);
            if (!is_listable_name(name)) continue;
            bool is_file = entry->d_type == DT_REG;
            if (entry->d_type == DT_UNKNOWN || entry->d_type == DT_LNK) {
                // Follow symlinks, as head() and get() do.
                struct stat st {};
                is_file = ::fstatat(::dirfd(d), entry->d_name, &st, 0) == 0 && S_ISREG(st.st_mode);
            }
            if (is_file) names.emplace_back(name);
        }
        ::closedir(d);
        if (err != 0) return failure("list", prefix, Errc::Io, "readdir failed: " + errno_text(err));
        return sorted_unique(std::move(names));
    }

private:
    std::string join(const std::string& key) const { return base_ == "/" ? "/" + key : base_ + "/" + key; }

    Error failure(const std::string& op, const std::string& key, Errc code, const std::string& why) const {
        return make_error(code, op + " '" + printable(key) + "' in " + base_ + ": " + why);
    }

    // Creates the directories leading to `key` below base_. Adds to `created`
    // those it made, each of which needs its parent fsynced.
    Result<void> make_parents(const std::string& key, std::vector<std::string>& created) const {
        std::error_code ec;
        if (!std::filesystem::is_directory(base_, ec)) {
            std::filesystem::create_directories(base_, ec);
            if (ec) return failure("put", key, write_errc(ec.value()), "cannot create directory " + base_ + ": " + ec.message());
        }
        for (std::size_t slash = key.find('/'); slash != std::string::npos; slash = key.find('/', slash + 1)) {
            const std::string dir = join(key.substr(0, slash));
            if (::mkdir(dir.c_str(), 0755) == 0) {
                created.push_back(dir);
                continue;
            }
            const int err = errno;
            struct stat st {};
            if (err == EEXIST && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
            if (err == EEXIST) return failure("put", key, Errc::NotDirectory, dir + " exists and is not a directory");
            return failure("put", key, write_errc(err), "cannot create directory " + dir + ": " + errno_text(err));
        }
        return {};
    }

    // The put protocol: a temp file beside the final name, filled by `fill`,
    // fsynced, renamed over `key`, then the directory fsynced. On any failure
    // the temp file is removed and nothing appears under `key`.
    Result<void> publish(const std::string& key, const std::function<Result<void>(int fd)>& fill) {
        std::vector<std::string> created;
        if (auto ok = make_parents(key, created); !ok) return ok;
        const std::string final_path = join(key);
        const std::string dir = final_path.substr(0, final_path.rfind('/'));
        const std::string temp = final_path + std::string(kPartialMarker) + std::to_string(::getpid()) + "-" +
                                 std::to_string(salt_ ^ counter_.fetch_add(1, std::memory_order_relaxed));
        UniqueFd out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        if (!out.is_open()) {
            const int err = errno;
            return failure("put", key, write_errc(err), "cannot create " + temp + ": " + errno_text(err));
        }
        // Removes the temp file on every early return (and on a throw).
        struct TempGuard {
            const std::string& path;
            bool armed = true;
            ~TempGuard() {
                if (armed) ::unlink(path.c_str());
            }
        } guard{temp};
        if (auto ok = fill(out.get()); !ok) return failure("put", key, ok.error().code, ok.error().message);
        if (::fsync(out.get()) != 0) {
            const int err = errno;
            return failure("put", key, write_errc(err), "fsync of " + temp + " failed: " + errno_text(err));
        }
        if (const int err = out.close(); err != 0) {
            return failure("put", key, write_errc(err), "close of " + temp + " failed: " + errno_text(err));
        }
        if (::rename(temp.c_str(), final_path.c_str()) != 0) {
            const int err = errno;
            return failure("put", key, Errc::Io, "rename to " + final_path + " failed: " + errno_text(err));
        }
        guard.armed = false;
        // The object is complete and its bytes durable from here on; a failing
        // directory fsync only leaves the name's durability in doubt, so it is
        // reported but the (complete) object is not removed.
        std::vector<std::string> to_sync{dir};  // holds the new name
        for (const std::string& d : created) to_sync.push_back(d.substr(0, d.rfind('/')));  // holds a new directory
        for (const std::string& d : sorted_unique(std::move(to_sync))) {
            if (const int err = fsync_path(d); err != 0) {
                return failure("put", key, Errc::Io, "fsync of directory " + d + " failed: " + errno_text(err));
            }
        }
        return {};
    }

    std::string base_;  // absolute, no trailing '/' (unless it is "/")
    std::uint64_t salt_ = 0;
    std::atomic<std::uint64_t> counter_{0};
};

// ---- HttpStore --------------------------------------------------------------

bool is_unreserved(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

std::string encode_key(std::string_view key) { return uri_encode(key, true); }

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Percent-decodes `s` ('+' stays '+': this is a path, not a form). False on a
// malformed escape.
bool percent_decode(std::string_view s, std::string& out) {
    out.clear();
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) return false;
        const int hi = hex_value(s[i + 1]);
        const int lo = hex_value(s[i + 2]);
        if (hi < 0 || lo < 0) return false;
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return true;
}

// The few HTML character references that show up in generated hrefs.
std::string unescape_html(std::string_view s) {
    static constexpr std::pair<std::string_view, char> kEntities[] = {
        {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&#39;", '\''}, {"&#x27;", '\''}};
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        bool matched = false;
        if (s[i] == '&') {
            for (const auto& [entity, c] : kEntities) {
                if (s.substr(i, entity.size()) == entity) {
                    out += c;
                    i += entity.size();
                    matched = true;
                    break;
                }
            }
        }
        if (!matched) out += s[i++];
    }
    return out;
}

// File names linked from an HTML index: relative links to entries directly
// in this collection. Skips the parent ("../"), sub-collections (ending in
// '/'), absolute paths and URLs, and query or fragment links (sort columns).
std::vector<std::string> scrape_html_index(std::string_view html) {
    std::vector<std::string> names;
    std::string lowered(html);
    for (char& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string decoded;
    for (std::size_t pos = lowered.find("href"); pos != std::string::npos; pos = lowered.find("href", pos)) {
        pos += 4;
        std::size_t i = pos;
        while (i < html.size() && std::isspace(static_cast<unsigned char>(html[i])) != 0) ++i;
        if (i >= html.size() || html[i] != '=') continue;
        ++i;
        while (i < html.size() && std::isspace(static_cast<unsigned char>(html[i])) != 0) ++i;
        if (i >= html.size()) break;
        std::size_t end = 0;
        if (html[i] == '"' || html[i] == '\'') {
            end = html.find(html[i], i + 1);
            if (end == std::string_view::npos) break;
            ++i;
        } else {
            end = html.find_first_of(" \t\r\n>", i);
            if (end == std::string_view::npos) end = html.size();
        }
        const std::string link = unescape_html(html.substr(i, end - i));
        pos = end;
        if (link.empty() || link.find_first_of("?#") != std::string::npos || link.front() == '/' ||
            link.back() == '/') {
            continue;
        }
        // A ':' before any '/' is a scheme ("http:", "mailto:"); servers write
        // a relative name holding ':' as "./a:b" or "a%3Ab".
        const auto colon = link.find(':');
        if (colon != std::string::npos && colon < link.find('/')) continue;
        std::string_view relative = link;
        if (relative.substr(0, 2) == "./") relative.remove_prefix(2);
        if (!percent_decode(relative, decoded) || !is_listable_name(decoded)) continue;
        names.push_back(decoded);
    }
    return names;
}

// Parses a collection listing: nginx `autoindex_format json`
// ([{"name": .., "type": "file"|"directory"|"other", ..}]) or, if the body
// does not look like JSON, an HTML index.
Result<std::vector<std::string>> parse_listing(std::string_view body) {
    std::string_view text = body;
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())) != 0) text.remove_prefix(1);
    if (text.empty() || (text.front() != '[' && text.front() != '{')) return sorted_unique(scrape_html_index(body));
    const auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return make_error(Errc::HttpStatus, "listing is not valid JSON");
    if (!json.is_array()) return make_error(Errc::HttpStatus, "JSON listing is not an array");
    std::vector<std::string> names;
    for (const auto& entry : json) {
        if (!entry.is_object()) continue;
        const auto name = entry.find("name");
        const auto type = entry.find("type");
        if (name == entry.end() || type == entry.end() || !name->is_string() || !type->is_string()) continue;
        if (type->get_ref<const std::string&>() != "file") continue;
        const auto& text_name = name->get_ref<const std::string&>();
        if (is_listable_name(text_name)) names.push_back(text_name);
    }
    return sorted_unique(std::move(names));
}

// A WebDAV collection at `base_` (ends in '/'); keys map to base_ +
// percent-encoded key. Atomicity of puts is the server's: nginx's dav module
// writes the body to a temp file and renames it on completion, so a failed
// PUT leaves nothing under the key. Thread-safe (HttpClient is; the store is
// immutable).
class HttpStore final : public ObjectStore {
public:
    HttpStore(std::string base, HttpClient& http) : base_(std::move(base)), http_(http) {}

    std::string describe() const override { return base_; }
    std::string location(const std::string& key) const override { return base_ + encode_key(key); }

    Result<void> put_file(const std::string& key, const std::string& path) override {
        if (auto ok = check_key(key, base_); !ok) return ok;
        if (auto r = http_.put_file(location(key), path).get(); !r) return failure("put", key, std::move(r).error());
        return {};
    }

    Result<void> put_bytes(const std::string& key, const std::string& bytes) override {
        if (auto ok = check_key(key, base_); !ok) return ok;
        auto r = http_.put(location(key), std::make_shared<const std::string>(bytes)).get();
        if (!r) return failure("put", key, std::move(r).error());
        return {};
    }

    Result<std::uint64_t> head(const std::string& key) override {
        if (auto ok = check_key(key, base_); !ok) return std::move(ok).error();
        auto r = http_.head(location(key)).get();
        if (!r) return failure("head", key, std::move(r).error());
        return r;
    }

    Result<std::string> get(const std::string& key) override {
        if (auto ok = check_key(key, base_); !ok) return std::move(ok).error();
        auto r = http_.get(location(key)).get();
        if (!r) return failure("get", key, std::move(r).error());
        return r;
    }

    Result<std::vector<std::string>> list(const std::string& prefix) override {
        if (auto ok = check_prefix(prefix, base_); !ok) return std::move(ok).error();
        auto r = http_.get(base_ + encode_key(prefix)).get();
        if (!r) {
            // A collection nobody has written into yet does not exist.
            if (r.error().code == Errc::NotFound) return std::vector<std::string>{};
            return failure("list", prefix, std::move(r).error());
        }
        try {
            auto names = parse_listing(r.value());
            if (!names) return failure("list", prefix, std::move(names).error());
            return names;
        } catch (const std::exception& e) {  // bad_alloc, or a nlohmann surprise
            return failure("list", prefix, make_error(Errc::Internal, std::string("listing: ") + e.what()));
        }
    }

    std::unique_ptr<StreamingPut> begin_stream(const std::string& key, const std::string& path) override {
        if (!check_key(key, base_)) return nullptr;
        auto s = http_.stream_put(location(key), path);
        if (!s) {
            log::warn("checkpoint", s.error().message);
            return nullptr;
        }
        return std::move(s).value();
    }

    Result<void> move(const std::string& from, const std::string& to, MoveMode mode) override {
        if (auto ok = check_key(from, base_); !ok) return ok;
        if (auto ok = check_key(to, base_); !ok) return ok;
        const bool replace = mode == MoveMode::Replace;
        HttpRequest r;
        r.method = "MOVE";
        r.url = location(from);
        r.options.headers = {"Destination: " + location(to), replace ? "Overwrite: T" : "Overwrite: F"};
        if (auto res = http_.send(std::move(r)).get(); !res) return failure("move", from, std::move(res).error());
        return {};
    }

    Result<void> remove(const std::string& key) override {
        if (auto ok = check_key(key, base_); !ok) return ok;
        HttpRequest r;
        r.method = "DELETE";
        r.url = location(key);
        if (auto res = http_.send(std::move(r)).get(); !res) return failure("delete", key, std::move(res).error());
        return {};
    }

private:
    Error failure(const std::string& op, const std::string& key, Error cause) const {
        return make_error(cause.code, op + " '" + printable(key) + "' in " + base_ + ": " + cause.message);
    }

    std::string base_;
    HttpClient& http_;
};

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
    }
    return true;
}

Result<std::unique_ptr<ObjectStore>> open_http(const std::string& location, HttpClient* http) {
    const auto scheme_end = location.find("://");
    const std::size_t host = scheme_end + 3;
    if (host >= location.size() || location[host] == '/') {
        return make_error(Errc::InvalidArgument, "object store " + location + ": URL has no host");
    }
    if (location.find_first_of("?#") != std::string::npos) {
        return make_error(Errc::InvalidArgument, "object store " + location + ": URL has a query or fragment");
    }
    if (http == nullptr) {
        return make_error(Errc::InvalidArgument, "object store " + location + ": no HTTP client is configured");
    }
    std::string base = location;
    if (base.back() != '/') base += '/';
    return std::unique_ptr<ObjectStore>(std::make_unique<HttpStore>(std::move(base), *http));
}

Result<std::unique_ptr<ObjectStore>> open_local(const std::string& location) {
    std::error_code ec;
    std::filesystem::path path = std::filesystem::absolute(location, ec);
    // Absolute, because a daemonised mount runs with "/" as its working directory.
    if (ec) return make_error(Errc::Io, "object store " + location + ": " + ec.message());
    // Created on the first put, not here: mounting must not leave an empty
    // checkpoints/ directory beside every manifest.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return make_error(Errc::NotDirectory, "object store " + location + ": not a directory");
    } else if (errno == ENOTDIR) {
        return make_error(Errc::NotDirectory, "object store " + location + ": a parent is not a directory");
    } else if (errno != ENOENT) {
        return make_error(Errc::Io, "object store " + location + ": " + errno_text(errno));
    }
    std::string base = path.lexically_normal().string();
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    return std::unique_ptr<ObjectStore>(std::make_unique<LocalStore>(std::move(base)));
}

}  // namespace

std::string uri_encode(std::string_view text, bool keep_slash) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            out += c;
        } else {
            out += '%';
            out += kHex[u >> 4];
            out += kHex[u & 0xf];
        }
    }
    return out;
}

Result<void> check_object_key(const std::string& key, const std::string& base) { return check_key(key, base); }
Result<void> check_list_prefix(const std::string& prefix, const std::string& base) {
    return check_prefix(prefix, base);
}
bool is_listable_key_name(std::string_view name) { return is_listable_name(name); }
std::string printable_key(std::string_view key) { return printable(key); }

std::unique_ptr<StreamingPut> ObjectStore::begin_stream(const std::string&, const std::string&) { return nullptr; }

Result<void> ObjectStore::move(const std::string& from, const std::string&, MoveMode) {
    return make_error(Errc::NotSupported, "move '" + printable_key(from) + "' in " + describe() + ": not supported");
}

Result<void> ObjectStore::remove(const std::string& key) {
    return make_error(Errc::NotSupported, "delete '" + printable_key(key) + "' in " + describe() + ": not supported");
}

Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& location, HttpClient* http) {
    if (location.empty()) return make_error(Errc::InvalidArgument, "object store location is empty");
    if (location.find('\0') != std::string::npos) {
        return make_error(Errc::InvalidArgument, "object store location '" + printable(location) + "' has a NUL byte");
    }
    if (starts_with_nocase(location, "http://") || starts_with_nocase(location, "https://")) {
        return open_http(location, http);
    }
    if (is_url(location)) {
        return make_error(Errc::InvalidArgument,
                          "object store " + location + ": unsupported scheme (use http://, https:// or a path)");
    }
    try {
        return open_local(location);
    } catch (const std::exception& e) {  // std::filesystem allocates
        return make_error(Errc::Internal, "object store " + location + ": " + e.what());
    }
}

}  // namespace shelbyfs
