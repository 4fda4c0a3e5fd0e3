// TestServer: loopback HTTP/1.1 server with Range and fault injection.
#include "test_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string_view>

namespace shelbyfs::test {

namespace {

[[noreturn]] void die(const char* what) {
    std::perror(what);
    std::abort();
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

struct ByteRange {
    std::uint64_t first = 0;
    std::uint64_t last = 0;  // inclusive; clipped to the object
    bool satisfiable = true;
};

// Parses a single "bytes=a-b", "bytes=a-" or "bytes=-n" against `size`.
// nullopt means "no usable Range header": serve the whole object.
std::optional<ByteRange> parse_range(std::string_view header, std::uint64_t size) {
    if (header.substr(0, 6) != "bytes=") return std::nullopt;
    header.remove_prefix(6);
    if (header.find(',') != std::string_view::npos) return std::nullopt;
    const auto dash = header.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    const auto a = header.substr(0, dash);
    const auto b = header.substr(dash + 1);
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    if (a.empty()) {
        std::uint64_t n = 0;
        if (std::from_chars(b.data(), b.data() + b.size(), n).ec != std::errc{} || n == 0) return std::nullopt;
        if (size == 0) return ByteRange{0, 0, false};
        first = n >= size ? 0 : size - n;
        return ByteRange{first, size - 1, true};
    }
    if (std::from_chars(a.data(), a.data() + a.size(), first).ec != std::errc{}) return std::nullopt;
    if (b.empty()) {
        last = size == 0 ? 0 : size - 1;
    } else if (std::from_chars(b.data(), b.data() + b.size(), last).ec != std::errc{} || last < first) {
        return std::nullopt;
    }
    if (first >= size) return ByteRange{first, last, false};
    return ByteRange{first, std::min(last, size - 1), true};
}

// Moves `n` bytes of request body from `buffer` (topped up from `fd`) to `out`.
// False if the peer closed or failed first.
bool read_body(int fd, std::string& buffer, std::size_t n, std::string& out) {
    char chunk[65536];
    while (buffer.size() < n) {
        const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        buffer.append(chunk, static_cast<std::size_t>(got));
    }
    out = buffer.substr(0, n);
    buffer.erase(0, n);
    return true;
}

// Blocks without reading until the peer hangs up or `stopping` is set (the
// destructor's shutdown() also ends the wait).
void wait_for_hangup(int fd, const std::atomic<bool>& stopping) {
    while (!stopping) {
        pollfd p{fd, POLLRDHUP, 0};
        const int rc = ::poll(&p, 1, 50);
        if (rc < 0 && errno != EINTR) return;
        if (rc > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) return;
    }
}

const char* reason(int status) {
    switch (status) {
        case 200: return "OK";
        case 201: return "Created";
        case 403: return "Forbidden";
        case 405: return "Method Not Allowed";
        case 411: return "Length Required";
        case 206: return "Partial Content";
        case 404: return "Not Found";
        case 408: return "Request Timeout";
        case 416: return "Range Not Satisfiable";
        case 429: return "Too Many Requests";
        case 500: return "Internal Server Error";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        default: return "Whatever";
    }
}

std::string head(int status, std::uint64_t content_length, const std::string& extra = {}) {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason(status) + "\r\nContent-Length: " +
           std::to_string(content_length) + "\r\nAccept-Ranges: bytes\r\n" + extra + "\r\n";
}

// Decodes %XX escapes (malformed ones are kept as they are).
std::string percent_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        unsigned value = 0;
        if (s[i] == '%' && i + 2 < s.size() &&
            std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16).ptr == s.data() + i + 3) {
            out += static_cast<char>(value);
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            char escape[8];
            std::snprintf(escape, sizeof escape, "\\u%04x", u);
            out += escape;
        } else {
            out += c;  // UTF-8 passes through, as nginx writes it
        }
    }
    return out + "\"";
}

std::string html_text(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (c == '<') out += "&lt;";
        else if (c == '>') out += "&gt;";
        else if (c == '&') out += "&amp;";
        else out += c;
    }
    return out;
}

std::string content_range(std::uint64_t first, std::uint64_t last, std::uint64_t size) {
    return "Content-Range: bytes " + std::to_string(first) + "-" + std::to_string(last) + "/" +
           std::to_string(size) + "\r\n";
}

}  // namespace

TestServer::TestServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) die("test_server: socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("test_server: bind");
    if (::listen(listen_fd_, 128) != 0) die("test_server: listen");
    socklen_t len = sizeof addr;
    if (::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die("test_server: getsockname");
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { accept_loop(); });
}

TestServer::~TestServer() {
    stopping_ = true;
    // shutdown() wakes a thread blocked in accept() or recv() on Linux.
    ::shutdown(listen_fd_, SHUT_RDWR);
    accept_thread_.join();
    ::close(listen_fd_);
    {
        std::lock_guard lock(mutex_);
        for (auto& c : conns_) {
            if (c->fd >= 0) ::shutdown(c->fd, SHUT_RDWR);
        }
    }
    // The accept thread is gone, so conns_ no longer grows; join unlocked
    // because each connection thread takes mutex_ to close its fd.
    for (auto& c : conns_) c->thread.join();
}

std::string TestServer::url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
}

void TestServer::put(const std::string& path, std::string body) {
    std::lock_guard lock(mutex_);
    objects_[path] = std::move(body);
}

void TestServer::set_fault(const std::string& path, Fault fault, int count, int status) {
    std::lock_guard lock(mutex_);
    faults_[path] = FaultState{fault, count, status};
}

int TestServer::requests(const std::string& path) const {
    std::lock_guard lock(mutex_);
    const auto it = requests_.find(path);
    return it == requests_.end() ? 0 : it->second;
}

std::string TestServer::last_request(const std::string& path) const {
    std::lock_guard lock(mutex_);
    const auto it = last_request_.find(path);
    return it == last_request_.end() ? std::string{} : it->second;
}

std::optional<std::string> TestServer::object(const std::string& path) const {
    std::lock_guard lock(mutex_);
    const auto it = objects_.find(path);
    if (it == objects_.end()) return std::nullopt;
    return it->second;
}

void TestServer::set_listing(Listing listing) {
    std::lock_guard lock(mutex_);
    listing_ = listing;
}

std::uint64_t TestServer::body_bytes(const std::string& path) const {
    std::lock_guard lock(mutex_);
    const auto it = body_bytes_.find(path);
    return it == body_bytes_.end() ? 0 : it->second;
}

std::vector<std::string> TestServer::paths() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [path, body] : objects_) out.push_back(path);
    return out;
}

void TestServer::count_body_bytes(const std::string& path, std::size_t n) {
    std::lock_guard lock(mutex_);
    body_bytes_[path] += n;
}

std::optional<std::string> TestServer::listing_locked(const std::string& path) const {
    // raw (as linked) -> is a directory; a map keeps entries sorted and unique.
    std::map<std::string, bool> entries;
    for (auto it = objects_.lower_bound(path); it != objects_.end() && it->first.starts_with(path); ++it) {
        const std::string rest = it->first.substr(path.size());
        if (rest.empty()) continue;
        const auto slash = rest.find('/');
        if (slash == std::string::npos) {
            entries.emplace(rest, false);
        } else if (slash > 0) {
            entries[rest.substr(0, slash)] = true;
        }
    }
    if (entries.empty()) return std::nullopt;
    const std::string mtime = "Wed, 01 Jan 2025 00:00:00 GMT";
    std::string out;
    if (listing_ == Listing::NginxJson) {
        // The shape nginx's autoindex_format json writes, one entry per line.
        out = "[\n";
        bool first = true;
        for (const auto& [raw, is_dir] : entries) {
            if (!first) out += ",\n";
            first = false;
            out += "{ \"name\":" + json_string(percent_decode(raw)) + ", \"type\":\"" +
                   (is_dir ? "directory" : "file") + "\", \"mtime\":\"" + mtime + "\"";
            if (!is_dir) out += ", \"size\":" + std::to_string(objects_.at(path + raw).size());
            out += " }";
        }
        return out + "\n]\n";
    }
    // An HTML index with the links real servers add: parent, sort-order
    // queries (Apache), an absolute path and an absolute URL.
    out = "<html>\n<head><title>Index of " + html_text(path) + "</title></head>\n<body>\n<h1>Index of " +
          html_text(path) + "</h1><hr><pre><a href=\"../\">../</a>\n" +
          "<a href=\"?C=N;O=D\">Name</a> <a href='?C=M;O=A'>Last modified</a>\n";
    for (const auto& [raw, is_dir] : entries) {
        const std::string name = percent_decode(raw) + (is_dir ? "/" : "");
        out += "<a href=\"" + raw + (is_dir ? "/" : "") + "\">" + html_text(name) + "</a>   01-Jan-2025 00:00   " +
               (is_dir ? std::string("-") : std::to_string(objects_.at(path + raw).size())) + "\n";
    }
    out += "</pre><hr><a href=\"/\">home</a> <a href=\"http://example.com/x\">elsewhere</a></body>\n</html>\n";
    return out;
}

std::string TestServer::last_range(const std::string& path) const {
    std::lock_guard lock(mutex_);
    const auto it = last_range_.find(path);
    return it == last_range_.end() ? std::string{} : it->second;
}

void TestServer::accept_loop() {
    for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            if (stopping_) return;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        if (stopping_) {
            ::close(fd);
            return;
        }
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ++connections_;
        std::lock_guard lock(mutex_);
        auto conn = std::make_unique<Connection>();
        conn->fd = fd;
        Connection* raw = conn.get();
        conns_.push_back(std::move(conn));
        raw->thread = std::thread([this, raw] {
            serve(raw->fd);
            std::lock_guard inner(mutex_);
            ::close(raw->fd);
            raw->fd = -1;
        });
    }
}

void TestServer::serve(int fd) {
    std::string buffer;
    char chunk[4096];
    for (;;) {
        const auto end = buffer.find("\r\n\r\n");
        if (end != std::string::npos) {
            const std::string request = buffer.substr(0, end + 4);
            buffer.erase(0, end + 4);
            if (!handle(fd, request, buffer)) return;
            continue;
        }
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        buffer.append(chunk, static_cast<std::size_t>(n));
    }
}

bool TestServer::handle(int fd, const std::string& request, std::string& buffer) {
    // Request line: "GET /path HTTP/1.1".
    const auto line_end = request.find("\r\n");
    const std::string_view line(request.data(), line_end);
    const auto sp1 = line.find(' ');
    const auto sp2 = line.find(' ', sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) return false;
    const std::string method(line.substr(0, sp1));
    const std::string path(line.substr(sp1 + 1, sp2 - sp1 - 1));

    std::string range_header;
    std::optional<std::uint64_t> content_length;
    bool close_after = false;
    std::size_t pos = line_end + 2;
    while (pos < request.size()) {
        const auto eol = request.find("\r\n", pos);
        if (eol == std::string::npos || eol == pos) break;
        const std::string_view h(request.data() + pos, eol - pos);
        pos = eol + 2;
        const auto colon = h.find(':');
        if (colon == std::string_view::npos) continue;
        const std::string name = lower(h.substr(0, colon));
        const std::string_view value = trim(h.substr(colon + 1));
        if (name == "range") range_header = std::string(value);
        if (name == "content-length") {
            std::uint64_t n = 0;
            if (std::from_chars(value.data(), value.data() + value.size(), n).ec == std::errc{}) content_length = n;
        }
        if (name == "connection" && lower(value) == "close") close_after = true;
    }

    std::optional<std::string> object;
    FaultState fault;
    {
        std::lock_guard lock(mutex_);
        ++requests_[path];
        last_range_[path] = range_header;
        last_request_[path] = request;
        if (const auto it = objects_.find(path); it != objects_.end()) {
            object = it->second;
        } else if (method == "GET" && listing_ != Listing::None && !path.empty() && path.back() == '/') {
            object = listing_locked(path);
        }
        if (auto it = faults_.find(path); it != faults_.end() && it->second.fault != Fault::None &&
                                          it->second.remaining != 0) {
            fault = it->second;
            if (it->second.remaining > 0) --it->second.remaining;
        }
    }

    if (method == "PUT") return handle_put(fd, path, content_length, fault, buffer) && !close_after;
    if (method == "HEAD") {
        if (fault.fault == Fault::Status) return send_all(fd, head(fault.status, 15)) && !close_after;
        if (fault.fault == Fault::Stall) {
            wait_for_hangup(fd, stopping_);
            return false;
        }
        if (!object) return send_all(fd, head(404, 10)) && !close_after;
        return send_all(fd, head(200, object->size())) && !close_after;
    }
    if (method != "GET") {
        const std::string body = "only GET, HEAD and PUT\n";
        return send_all(fd, head(405, body.size()) + body) && !close_after;
    }
    if (fault.fault == Fault::Status) {
        const std::string body = "injected fault\n";
        return send_all(fd, head(fault.status, body.size()) + body) && !close_after;
    }
    if (!object) {
        const std::string body = "not found\n";
        return send_all(fd, head(404, body.size()) + body) && !close_after;
    }
    const std::string& data = *object;
    const std::uint64_t size = data.size();
    std::optional<ByteRange> range;
    if (!range_header.empty() && fault.fault != Fault::IgnoreRange) range = parse_range(range_header, size);

    if (range && !range->satisfiable) {
        return send_all(fd, head(416, 0, "Content-Range: bytes */" + std::to_string(size) + "\r\n")) && !close_after;
    }

    std::string headers;
    std::string body;
    if (!range) {
        headers = head(200, size);
        body = data;
    } else {
        const std::uint64_t len = range->last - range->first + 1;
        switch (fault.fault) {
            case Fault::WrongContentRange: {
                const std::uint64_t first = range->first + 1;
                body = first < size ? data.substr(first, len) : std::string{};
                body.resize(len, 'x');
                headers = head(206, len, content_range(first, first + len - 1, std::max(size, first + len)));
                break;
            }
            case Fault::ExtraByte:
                body = data.substr(range->first, len) + "x";
                headers = head(206, len + 1, content_range(range->first, range->last, size));
                break;
            default:
                body = data.substr(range->first, len);
                headers = head(206, len, content_range(range->first, range->last, size));
                break;
        }
    }

    switch (fault.fault) {
        case Fault::ShortBody:
            send_all(fd, headers + body.substr(0, body.size() / 2));
            return false;
        case Fault::Stall: {
            if (!send_all(fd, headers)) return false;
            // Wait for the client to give up (or the server to stop).
            char sink[256];
            while (::recv(fd, sink, sizeof sink, 0) > 0) {
            }
            return false;
        }
        default:
            return send_all(fd, headers + body) && !close_after;
    }
}

bool TestServer::handle_put(int fd, const std::string& path, std::optional<std::uint64_t> content_length,
                            const FaultState& fault, std::string& buffer) {
    if (!content_length) {
        const std::string body = "Content-Length required\n";
        send_all(fd, head(411, body.size()) + body);
        return false;  // the body's framing is unknown: cannot keep the connection
    }
    const auto size = static_cast<std::size_t>(*content_length);
    std::string data;
    switch (fault.fault) {
        case Fault::ShortBody:
            if (read_body(fd, buffer, size / 2, data)) count_body_bytes(path, data.size());
            return false;
        case Fault::Stall:
            if (!read_body(fd, buffer, size / 2, data)) return false;
            count_body_bytes(path, data.size());
            wait_for_hangup(fd, stopping_);
            return false;
        default:
            break;
    }
    if (!read_body(fd, buffer, size, data)) return false;
    count_body_bytes(path, data.size());
    if (fault.fault == Fault::Status) {
        const std::string body = "injected fault\n";
        return send_all(fd, head(fault.status, body.size()) + body);
    }
    {
        std::lock_guard lock(mutex_);
        objects_[path] = std::move(data);
    }
    return send_all(fd, head(201, 0));
}

TempDir::TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/shelbyfs-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) die("TempDir: mkdtemp");
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& data) const {
    const std::string path = file(name);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) die("TempDir::write: fopen");
    if (std::fwrite(data.data(), 1, data.size(), f) != data.size() || std::fclose(f) != 0) die("TempDir::write");
    return path;
}

std::uint16_t unused_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("unused_port: socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("unused_port: bind");
    socklen_t len = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die("unused_port: getsockname");
    ::close(fd);  // bound but never listened: connecting is refused
    return ntohs(addr.sin_port);
}

int open_fd_count() {
    int count = 0;
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) return -1;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') ++count;
    }
    ::closedir(dir);
    return count - 1;  // the DIR's own descriptor
}

}  // namespace shelbyfs::test
