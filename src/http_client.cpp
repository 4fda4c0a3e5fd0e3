// HttpClient: the curl-multi I/O thread, its job queue, retries and range checks.
#include "shelbyfs/http_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

// Slower than this over a whole stall_timeout counts as stalled (curl's low-speed check).
constexpr long kMinBytesPerSecond = 1024;
// Request bodies go out in pieces of this size (curl's default is 64 KiB;
// 2 MiB is its maximum). Each piece is a read callback and, for a chunked
// body, one chunk: against nginx with a 1 MiB client_body_buffer_size a
// streamed 1 GiB PUT took 0.65-0.78 s with 1 MiB pieces, 0.9-3.0 s with
// 64 KiB ones. curl frees the buffer when the transfer ends (multi_done).
constexpr long kUploadBufferSize = 1L << 20;


using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum class Kind { Range, Whole, Put, Head, Call };

// Put: where the request body comes from. Every attempt reads it from offset 0
// (curl may also seek back within an attempt). The size is fixed at submission.
// read() is called on the I/O thread only.
class UploadSource {
public:
    virtual ~UploadSource() = default;
    virtual std::uint64_t size() const = 0;
    // " from <path>", or "" for memory, to complete "PUT <url> (<n> bytes...)".
    virtual std::string origin() const = 0;
    // Copies between 1 and `n` bytes at `offset` into `buffer`; `n` > 0 and
    // offset + n <= size(). Returns the count, or the cause of a local failure.
    virtual Result<std::size_t> read(std::uint64_t offset, char* buffer, std::size_t n) = 0;
};

// put(): a shared in-memory body.
class BytesSource final : public UploadSource {
public:
    explicit BytesSource(std::shared_ptr<const std::string> body) : body_(std::move(body)) {}
    std::uint64_t size() const override { return body_->size(); }
    std::string origin() const override { return {}; }
    Result<std::size_t> read(std::uint64_t offset, char* buffer, std::size_t n) override {
        std::copy_n(body_->data() + offset, n, buffer);
        return n;
    }

private:
    std::shared_ptr<const std::string> body_;
};

// put_file(): a local file read with pread(), so only curl's upload buffer is
// ever in memory. Owns the descriptor from submission until the job ends.
class FileSource final : public UploadSource {
public:
    // The byte range [offset, offset + length) of `path`; length UINT64_MAX: to the end.
    static Result<std::unique_ptr<FileSource>> open(const std::string& path, std::uint64_t offset = 0,
                                                    std::uint64_t length = UINT64_MAX) {
        // O_NONBLOCK: a FIFO must not block the caller in open(); it is rejected below.
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
            const int err = errno;
            return make_error(Errc::Io, "cannot open " + path + ": " + std::strerror(err));
        }
        auto source = std::unique_ptr<FileSource>(new FileSource(fd, path));
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            return make_error(Errc::Io, "cannot stat " + path + ": " + std::strerror(err));
        }
        if (!S_ISREG(st.st_mode)) return make_error(Errc::Io, "cannot upload " + path + ": not a regular file");
        const auto file_size = static_cast<std::uint64_t>(st.st_size);
        if (offset > file_size || (length != UINT64_MAX && length > file_size - offset)) {
            return make_error(Errc::Io, "cannot upload bytes " + std::to_string(offset) + "+" + std::to_string(length) +
                                            " of " + path + ": the file has only " + std::to_string(file_size));
        }
        source->base_ = offset;
        source->size_ = length == UINT64_MAX ? file_size - offset : length;
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // a hint: failure is harmless
        return source;
    }
    ~FileSource() override { ::close(fd_); }
    FileSource(const FileSource&) = delete;
    FileSource& operator=(const FileSource&) = delete;

    std::uint64_t size() const override { return size_; }
    std::string origin() const override {
        if (base_ == 0) return " from " + path_;
        return " from " + path_ + " at byte " + std::to_string(base_);
    }
    Result<std::size_t> read(std::uint64_t offset, char* buffer, std::size_t n) override {
        for (;;) {
            const ssize_t got = ::pread(fd_, buffer, n, static_cast<off_t>(base_ + offset));
            if (got > 0) return static_cast<std::size_t>(got);
            const int err = errno;
            if (got < 0 && err == EINTR) continue;
            if (got == 0) {
                return make_error(Errc::Io, "local file " + path_ + " ended at byte " + std::to_string(offset) +
                                                ", short of its size when submitted (changed during upload?)");
            }
            return make_error(Errc::Io, "reading local file " + path_ + " at byte " + std::to_string(offset) +
                                            " failed: " + std::strerror(err));
        }
    }

private:
    FileSource(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
    int fd_;
    std::string path_;
    std::uint64_t base_ = 0;  // file offset of the body's first byte
    std::uint64_t size_ = 0;
};

// One request as the caller sees it; survives across attempts.
struct Job {
    Kind kind = Kind::Range;
    std::string url;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    std::string method;                   // Call: GET, HEAD, PUT, POST or DELETE
    std::unique_ptr<UploadSource> upload;  // Put/Call: the body, re-sent whole on every attempt; Call: may be null
    RequestOptions options;                // extra headers and signing, from the caller
    curl_slist* header_list = nullptr;     // built by the I/O thread on the first attempt
    std::string sigv4_param;               // "aws:amz:<region>:<service>" when signed
    // Range/Whole: the body; Put: nothing; Head: the Content-Length; Call: the response.
    std::variant<std::promise<Result<std::string>>, std::promise<Result<void>>, std::promise<Result<std::uint64_t>>,
                 std::promise<Result<HttpResponse>>>
        promise;
    int attempts = 0;  // attempts started so far

    Job() = default;
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;
    ~Job() { curl_slist_free_all(header_list); }

    std::string describe() const {
        switch (kind) {
            case Kind::Range:
                return "GET " + url + " bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
            case Kind::Whole:
                return "GET " + url;
            case Kind::Put:
                return "PUT " + url + " (" + std::to_string(upload->size()) + " bytes" + upload->origin() + ")";
            case Kind::Head:
                return "HEAD " + url;
            case Kind::Call:
                if (upload) return method + " " + url + " (" + std::to_string(upload->size()) + " bytes" + upload->origin() + ")";
                return method + " " + url;
        }
        return url;
    }

    void set_error(Error error) {
        std::visit([&](auto& p) { p.set_value(std::move(error)); }, promise);
    }
};

// One attempt of a Job: the easy handle's state. Touched only by the I/O thread
// (curl calls the callbacks from curl_multi_perform on that thread).
struct Transfer {
    std::unique_ptr<Job> job;
    CURL* easy = nullptr;
    std::uint64_t max_body = 0;
    long status = 0;              // of the response being received
    std::string content_range;    // of the response being received
    std::vector<std::pair<std::string, std::string>> headers;  // Call: of the response being received
    std::string error_body;       // the start of a non-2xx response's body, for messages
    std::string body;             // Range: the wanted bytes only; Whole/Call: everything
    std::uint64_t received = 0;   // body bytes of the final response, kept or not
    std::uint64_t received_total = 0;  // all body bytes, for stats
    std::uint64_t sent = 0;            // Put: read offset into job->upload, this attempt only
    std::string read_error;            // Put: why job->upload could not be read (not retried)
    Clock::time_point added{};
    Clock::time_point last_progress{};
    bool request_sent = false;
    bool stopped_early = false;  // 200 for a range: we had our bytes, stopped reading
    bool overlong = false;       // 206 body longer than the range
    bool too_big = false;        // whole body above max_body
    bool out_of_memory = false;
    bool stalled = false;
    char error_buffer[CURL_ERROR_SIZE] = {};

    void reset_response() {
        status = 0;
        content_range.clear();
        headers.clear();
        error_body.clear();
        body.clear();
        received = 0;
    }

    static constexpr std::size_t kErrorBodyBytes = 4096;

    // Returns false to make curl abort the transfer.
    bool take_body(const char* data, std::size_t n) {
        received_total += n;
        const std::uint64_t before = received;
        received += n;
        if (status < 200 || status > 299) {
            // An error page: keep its start for the message.
            if (error_body.size() < kErrorBodyBytes) error_body.append(data, std::min(n, kErrorBodyBytes - error_body.size()));
            return true;
        }
        if (job->kind == Kind::Put || job->kind == Kind::Head) return true;  // response body: discarded
        if (job->kind == Kind::Whole || job->kind == Kind::Call) {
            if (job->kind == Kind::Whole && status != 200) return true;
            if (received > max_body) {
                too_big = true;
                return false;
            }
            if (body.capacity() == 0) {
                curl_off_t expected = -1;
                curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &expected);
                if (expected > 0) body.reserve(std::min(static_cast<std::uint64_t>(expected), max_body));
            }
            body.append(data, n);
            return true;
        }
        if (status == 206) {
            if (received > job->length) {
                overlong = true;
                return false;
            }
            body.append(data, n);
            return true;
        }
        if (status == 200) {
            // The server ignored Range: keep [offset, offset+length) of the whole body.
            const std::uint64_t want_end = job->offset + job->length;
            const std::uint64_t lo = std::max(before, job->offset);
            const std::uint64_t hi = std::min(received, want_end);
            if (lo < hi) body.append(data + (lo - before), static_cast<std::size_t>(hi - lo));
            if (received >= want_end) {
                curl_off_t expected = -1;
                curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &expected);
                if (expected < 0 || received < static_cast<std::uint64_t>(expected)) {
                    // Do not download the rest of a possibly huge object; this
                    // costs the connection, which is cheaper.
                    stopped_early = true;
                    return false;
                }
            }
            return true;
        }
        return true;  // error page: discarded
    }
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto& t = *static_cast<Transfer*>(user);
    const std::size_t n = size * count;
    t.last_progress = Clock::now();
    try {
        return t.take_body(data, n) ? n : 0;
    } catch (const std::bad_alloc&) {
        t.out_of_memory = true;
        return 0;
    }
}

// Put: feeds curl the next slice of the body.
std::size_t on_read(char* buffer, std::size_t size, std::size_t count, void* user) {
    auto& t = *static_cast<Transfer*>(user);
    if (!t.job->upload) return 0;  // an empty body
    UploadSource& source = *t.job->upload;
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(size * count, source.size() - t.sent));
    if (n == 0) return 0;
    try {
        Result<std::size_t> got = source.read(t.sent, buffer, n);
        if (!got) {
            t.read_error = std::move(got).error().message;
            return CURL_READFUNC_ABORT;
        }
        t.sent += *got;
        t.last_progress = Clock::now();
        return *got;
    } catch (const std::bad_alloc&) {
        t.out_of_memory = true;
        return CURL_READFUNC_ABORT;
    }
}

// Put: curl rewinds when it must re-send the body on the same attempt (a
// reused connection that turned out dead, a redirect).
int on_seek(void* user, curl_off_t offset, int origin) {
    auto& t = *static_cast<Transfer*>(user);
    const std::uint64_t size = t.job->upload ? t.job->upload->size() : 0;
    if (origin != SEEK_SET || offset < 0 || static_cast<std::uint64_t>(offset) > size) {
        return CURL_SEEKFUNC_CANTSEEK;
    }
    t.sent = static_cast<std::uint64_t>(offset);
    return CURL_SEEKFUNC_OK;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    auto& t = *static_cast<Transfer*>(user);
    const std::size_t n = size * count;
    t.last_progress = Clock::now();
    const std::string_view line(data, n);
    try {
        if (starts_with_nocase(line, "http/")) {
            // A new response (redirect, 100 Continue, or the final one).
            t.reset_response();
            const auto space = line.find(' ');
            if (space != std::string_view::npos) {
                const auto code = line.substr(space + 1);
                std::from_chars(code.data(), code.data() + code.size(), t.status);
            }
        } else if (starts_with_nocase(line, "content-range:")) {
            t.content_range = std::string(trim(line.substr(14)));
        }
        if (t.job->kind == Kind::Call) {
            const auto colon = line.find(':');
            if (colon != std::string_view::npos && colon > 0) {
                std::string name(line.substr(0, colon));
                for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                t.headers.emplace_back(std::move(name), std::string(trim(line.substr(colon + 1))));
            }
        }
    } catch (const std::bad_alloc&) {
        t.out_of_memory = true;
        return 0;
    }
    return n;
}

#if LIBCURL_VERSION_NUM >= 0x075000
int on_prereq(void* user, char*, char*, int, int) {
    auto& t = *static_cast<Transfer*>(user);
    // Connected (or reused): from now on silence counts as a stall.
    t.request_sent = true;
    t.last_progress = Clock::now();
    return CURL_PREREQFUNC_OK;
}
#endif

struct ContentRange {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    std::optional<std::uint64_t> total;
};

// Parses "bytes a-b/total" (total may be "*").
std::optional<ContentRange> parse_content_range(std::string_view s) {
    if (!starts_with_nocase(s, "bytes ")) return std::nullopt;
    s.remove_prefix(6);
    s = trim(s);
    ContentRange r;
    const char* p = s.data();
    const char* end = s.data() + s.size();
    auto [p1, e1] = std::from_chars(p, end, r.first);
    if (e1 != std::errc{} || p1 == end || *p1 != '-') return std::nullopt;
    auto [p2, e2] = std::from_chars(p1 + 1, end, r.last);
    if (e2 != std::errc{} || p2 == end || *p2 != '/' || r.last < r.first) return std::nullopt;
    const char* t = p2 + 1;
    if (t + 1 == end && *t == '*') return r;
    std::uint64_t total = 0;
    auto [p3, e3] = std::from_chars(t, end, total);
    if (e3 != std::errc{} || p3 != end) return std::nullopt;
    r.total = total;
    return r;
}

bool is_retryable_transport(CURLcode code) {
    switch (code) {
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_PARTIAL_FILE:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_WEIRD_SERVER_REPLY:
            return true;
        default:
            return false;
    }
}

// What to do with a finished attempt.
struct Outcome {
    enum class Action { Succeed, Retry, Fail } action;
    Errc code = Errc::Internal;  // for Retry: the code to use if retries run out
    std::string detail;          // cause, without the "GET url range: " prefix
    std::string body;
    std::uint64_t length = 0;  // Head: the Content-Length
    HttpResponse response;     // Call
};

Outcome succeed(std::string body) { return {Outcome::Action::Succeed, Errc::Internal, {}, std::move(body), 0, {}}; }
Outcome succeed_length(std::uint64_t length) { return {Outcome::Action::Succeed, Errc::Internal, {}, {}, length, {}}; }
Outcome retry(Errc code, std::string detail) { return {Outcome::Action::Retry, code, std::move(detail), {}, 0, {}}; }
Outcome fail(Errc code, std::string detail) { return {Outcome::Action::Fail, code, std::move(detail), {}, 0, {}}; }

// The text between <tag> and </tag> in `xml`, ignoring namespaces; "" if absent.
std::string xml_text(std::string_view xml, std::string_view tag) {
    const std::string open = "<" + std::string(tag) + ">";
    const auto start = xml.find(open);
    if (start == std::string_view::npos) return {};
    const auto from = start + open.size();
    const auto end = xml.find("</" + std::string(tag) + ">", from);
    if (end == std::string_view::npos) return {};
    return std::string(xml.substr(from, end - from));
}

// " (Code: Message)" from an S3 XML error, " (error)" from a JSON {"error": ...}
// body (the Shelby RPC), else the body's first line; "" for an empty body.
std::string error_summary(std::string_view body) {
    std::string text;
    if (const std::string code = xml_text(body, "Code"); !code.empty()) {
        text = code;
        if (const std::string message = xml_text(body, "Message"); !message.empty()) text += ": " + message;
    } else if (const auto key = body.find("\"error\""); key != std::string_view::npos) {
        const auto open = body.find('"', body.find(':', key));
        const auto close = open == std::string_view::npos ? open : body.find('"', open + 1);
        if (close != std::string_view::npos) text = std::string(body.substr(open + 1, close - open - 1));
    } else {
        text = std::string(body.substr(0, std::min<std::size_t>(body.find_first_of("\r\n"), 200)));
    }
    for (char& c : text) {
        if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    }
    if (text.size() > 300) text = text.substr(0, 300) + "...";
    return text.empty() ? std::string() : " (" + text + ")";
}

std::string range_text(std::uint64_t first, std::uint64_t last) {
    return std::to_string(first) + "-" + std::to_string(last);
}

Outcome evaluate(Transfer& t, CURLcode code, milliseconds stall_timeout) {
    const Job& job = *t.job;
    // A local read failure would fail again: the file, not the network, is at fault.
    if (!t.read_error.empty()) return fail(Errc::Io, t.read_error);
    if (t.stalled) {
        return retry(Errc::Network, "stalled: no data for " + std::to_string(stall_timeout.count()) + " ms");
    }
    if (t.out_of_memory) return fail(Errc::Internal, "out of memory handling the body (http-oom)");
    if (t.too_big) {
        return fail(Errc::HttpStatus, "body larger than the " + std::to_string(t.max_body) + "-byte limit");
    }
    if (t.overlong) return retry(Errc::HttpStatus, "HTTP 206 body longer than the " + std::to_string(job.length) + " bytes asked for");
    if (code == CURLE_OPERATION_TIMEDOUT && !t.stopped_early && t.request_sent) {
        // curl's low-speed check: a drip of bytes, too slow to ever finish.
        return retry(Errc::Network, "stalled: under " + std::to_string(kMinBytesPerSecond) + " bytes/s for " +
                                        std::to_string(stall_timeout.count()) + " ms");
    }
    if (code != CURLE_OK && !t.stopped_early) {
        std::string cause = t.error_buffer[0] != '\0' ? std::string(t.error_buffer) : curl_easy_strerror(code);
        if (code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL) {
            return fail(Errc::InvalidArgument, std::move(cause));
        }
        if (is_retryable_transport(code)) return retry(Errc::Network, std::move(cause));
        return fail(Errc::Network, std::move(cause));
    }
    const long status = t.status;
    const std::string status_text =
        "HTTP " + std::to_string(status) + (status >= 200 && status <= 299 ? std::string() : error_summary(t.error_body));
    const bool transient = status == 408 || status == 429 || (status >= 500 && status <= 599);
    if (job.kind == Kind::Put) {
        // 404 on a PUT is not "the object is missing": keep it an HttpStatus error.
        if (transient) return retry(Errc::HttpStatus, status_text);
        if (status != 200 && status != 201 && status != 204) return fail(Errc::HttpStatus, status_text);
        curl_off_t uploaded = -1;
        curl_easy_getinfo(t.easy, CURLINFO_SIZE_UPLOAD_T, &uploaded);
        if (uploaded >= 0 && static_cast<std::uint64_t>(uploaded) != job.upload->size()) {
            return retry(Errc::Network, status_text + " after sending only " + std::to_string(uploaded) + " bytes");
        }
        return succeed({});
    }
    if (job.kind == Kind::Call) {
        if (status == 404) return fail(Errc::NotFound, status_text + (t.error_body.empty() ? " (not found)" : ""));
        if (transient) return retry(Errc::HttpStatus, status_text);
        if (status < 200 || status > 299) return fail(Errc::HttpStatus, status_text);
        if (job.upload) {
            curl_off_t uploaded = -1;
            curl_easy_getinfo(t.easy, CURLINFO_SIZE_UPLOAD_T, &uploaded);
            if (uploaded >= 0 && static_cast<std::uint64_t>(uploaded) != job.upload->size()) {
                return retry(Errc::Network, status_text + " after sending only " + std::to_string(uploaded) + " bytes");
            }
        }
        Outcome out = succeed({});
        out.response.status = status;
        out.response.body = std::move(t.body);
        out.response.headers = std::move(t.headers);
        return out;
    }
    if (status == 404) return fail(Errc::NotFound, status_text + (t.error_body.empty() ? " (not found)" : ""));
    if (transient) return retry(Errc::HttpStatus, status_text);
    if (job.kind == Kind::Head) {
        if (status != 200) return fail(Errc::HttpStatus, status_text);
        curl_off_t length = -1;
        curl_easy_getinfo(t.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
        if (length < 0) return fail(Errc::HttpStatus, status_text + " without Content-Length");
        return succeed_length(static_cast<std::uint64_t>(length));
    }
    if (job.kind == Kind::Whole) {
        if (status != 200) return fail(Errc::HttpStatus, status_text);
        return succeed(std::move(t.body));
    }
    if (status == 416) return fail(Errc::HttpStatus, status_text + " (range not satisfiable)");
    const std::uint64_t last = job.offset + job.length - 1;
    if (status == 206) {
        if (t.content_range.empty() && t.body.size() == job.length) {
            // No Content-Range (the Shelby RPC documents none): the length is all we can check.
            return succeed(std::move(t.body));
        }
        if (t.content_range.empty() && t.body.size() < job.length) {
            // A complete answer (curl checked it against Content-Length) that
            // is shorter than asked: the blob ends inside the range. Final.
            return fail(Errc::HttpStatus, "HTTP 206 without Content-Range carries " + std::to_string(t.body.size()) +
                                              " of " + std::to_string(job.length) +
                                              " bytes: the range runs past the end of the object");
        }
        const auto cr = parse_content_range(t.content_range);
        if (!cr) return retry(Errc::HttpStatus, "HTTP 206 with bad Content-Range '" + t.content_range + "'");
        if (cr->first == job.offset && cr->last == last) {
            if (t.body.size() != job.length) {
                return retry(Errc::Network, "HTTP 206 body has " + std::to_string(t.body.size()) + " of " +
                                                std::to_string(job.length) + " bytes");
            }
            return succeed(std::move(t.body));
        }
        if (cr->first == job.offset && cr->last < last && cr->total && *cr->total == cr->last + 1) {
            return fail(Errc::HttpStatus,
                        "range runs past the end of the object (" + std::to_string(*cr->total) + " bytes)");
        }
        return retry(Errc::HttpStatus, "HTTP 206 with Content-Range '" + t.content_range + "', expected bytes " +
                                           range_text(job.offset, last));
    }
    if (status == 200) {
        if (t.body.size() == job.length) return succeed(std::move(t.body));
        return fail(Errc::HttpStatus, "HTTP 200 ignoring Range, and the object (" + std::to_string(t.received) +
                                          " bytes) ends before the range");
    }
    return fail(Errc::HttpStatus, status_text);
}

std::once_flag g_curl_init_once;
bool g_curl_init_ok = false;

}  // namespace

// ---- StreamingPut ----

// One streaming PUT: the state its thread and its handle share. The thread
// runs curl_easy_perform() with a read callback that waits for extend() and
// finish(); HttpClient::Impl owns the thread and joins it.
struct StreamState {
    std::string url;
    std::string path;
    int fd = -1;
    HttpOptions options;

    std::mutex mutex;
    std::condition_variable cv;
    std::uint64_t available = 0;  // [0, available) of the file is written and may be sent
    std::uint64_t final_size = 0;
    bool finished = false;  // finish() was called: final_size is known
    std::atomic<bool> abandoned{false};
    bool done = false;  // the transfer is over; `result` holds its verdict
    Result<void> result;
    std::uint64_t sent = 0;
    std::string error_body;
    std::string read_error;
    std::thread thread;
    // Stall detection while curl waits on the server (the writer's pauses
    // are timed in on_read): the last time bytes moved either way.
    std::atomic<std::int64_t> last_progress_ms{0};
    curl_off_t seen_up = 0, seen_down = 0;  // the thread's own

    static std::int64_t now_ms() {
        return std::chrono::duration_cast<milliseconds>(Clock::now().time_since_epoch()).count();
    }
    void progressed() { last_progress_ms = now_ms(); }

    ~StreamState() {
        if (fd >= 0) ::close(fd);
    }

    std::string describe() const { return "streaming PUT " + url + " from " + path; }

    static std::size_t on_read(char* buffer, std::size_t size, std::size_t count, void* user) {
        auto& st = *static_cast<StreamState*>(user);
        std::unique_lock lock(st.mutex);
        // The writer may pause (a training step between two saves of tensors);
        // a pause longer than the stall timeout ends the stream, and the
        // caller uploads the finished file instead.
        const bool ready = st.cv.wait_for(lock, st.options.stall_timeout, [&] {
            return st.abandoned.load() || st.sent < st.available || (st.finished && st.sent >= st.final_size);
        });
        if (st.abandoned.load()) return CURL_READFUNC_ABORT;
        if (!ready) {
            st.read_error = "nothing was written to the file for " +
                            std::to_string(st.options.stall_timeout.count() / 1000) + " s";
            return CURL_READFUNC_ABORT;
        }
        st.progressed();  // the writer's pause, if any, is over
        if (st.finished && st.sent >= st.final_size) return 0;  // the end of the body
        const std::uint64_t offset = st.sent;
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(size * count, st.available - offset));
        lock.unlock();
        ssize_t got;
        do {
            got = ::pread(st.fd, buffer, n, static_cast<off_t>(offset));
        } while (got < 0 && errno == EINTR);
        const int err = errno;
        lock.lock();
        if (got <= 0) {
            st.read_error = got == 0 ? "the file ended at byte " + std::to_string(offset)
                                     : std::string("reading it failed: ") + std::strerror(err);
            return CURL_READFUNC_ABORT;
        }
        st.sent += static_cast<std::uint64_t>(got);
        return static_cast<std::size_t>(got);
    }

    static std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
        auto& st = *static_cast<StreamState*>(user);
        const std::size_t n = size * count;
        std::lock_guard lock(st.mutex);
        if (st.error_body.size() < 4096) st.error_body.append(data, std::min<std::size_t>(n, 4096 - st.error_body.size()));
        return n;
    }

    // Called about once a second even while the server is not reading or not
    // answering: an abandoned stream stops then, and so does one where no byte
    // moved for the stall timeout (else finish() would wait for ever).
    static int on_progress(void* user, curl_off_t, curl_off_t dlnow, curl_off_t, curl_off_t ulnow) {
        auto& st = *static_cast<StreamState*>(user);
        if (st.abandoned.load()) return 1;
        if (ulnow != st.seen_up || dlnow != st.seen_down) {
            st.seen_up = ulnow;
            st.seen_down = dlnow;
            st.progressed();
            return 0;
        }
        if (now_ms() - st.last_progress_ms.load() > st.options.stall_timeout.count()) {
            std::lock_guard lock(st.mutex);
            st.read_error = "the server took nothing and said nothing for " +
                            std::to_string(st.options.stall_timeout.count() / 1000) + " s";
            return 1;
        }
        return 0;
    }

    void run() {
        Result<void> verdict = transfer();
        std::lock_guard lock(mutex);
        ::close(fd);  // now: the spool file may be unlinked, and its space must come back
        fd = -1;
        result = std::move(verdict);
        done = true;
        cv.notify_all();
    }

    Result<void> transfer() {
        progressed();
        CURL* e = curl_easy_init();
        if (e == nullptr) return make_error(Errc::Internal, describe() + ": curl_easy_init failed");
        // Chunked: the size is unknown until the file is closed. No
        // "Expect: 100-continue" round trip.
        curl_slist* headers = curl_slist_append(nullptr, "Transfer-Encoding: chunked");
        if (headers != nullptr) headers = curl_slist_append(headers, "Expect:");
        char error_buffer[CURL_ERROR_SIZE] = {};
        curl_easy_setopt(e, CURLOPT_URL, url.c_str());
        curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(-1));
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, kUploadBufferSize);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, &StreamState::on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, this);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &StreamState::on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, this);
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, &StreamState::on_progress);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, this);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, error_buffer);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout.count()));
        curl_easy_setopt(e, CURLOPT_USERAGENT, options.user_agent.c_str());
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(e, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        const CURLcode rc = headers == nullptr ? CURLE_OUT_OF_MEMORY : curl_easy_perform(e);
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(e);
        curl_slist_free_all(headers);

        std::lock_guard lock(mutex);
        if (abandoned.load()) return make_error(Errc::Io, describe() + ": abandoned");
        if (!read_error.empty()) return make_error(Errc::Io, describe() + ": " + read_error);
        if (rc != CURLE_OK)
            return make_error(Errc::Network,
                              describe() + ": " + (error_buffer[0] != 0 ? error_buffer : curl_easy_strerror(rc)));
        if (status < 200 || status > 299)
            return make_error(Errc::HttpStatus,
                              describe() + ": HTTP " + std::to_string(status) + error_summary(error_body));
        if (!finished || sent != final_size)
            return make_error(Errc::Io, describe() + ": sent " + std::to_string(sent) + " bytes, not the whole file");
        return {};
    }
};

class StreamingPutHandle final : public StreamingPut {
public:
    explicit StreamingPutHandle(std::shared_ptr<StreamState> state) : state_(std::move(state)) {}
    ~StreamingPutHandle() override {
        std::lock_guard lock(state_->mutex);
        if (!state_->done) state_->abandoned = true;
        state_->cv.notify_all();
    }
    StreamingPutHandle(const StreamingPutHandle&) = delete;
    StreamingPutHandle& operator=(const StreamingPutHandle&) = delete;

    void extend(std::uint64_t size) override {
        std::lock_guard lock(state_->mutex);
        if (state_->finished || size <= state_->available) return;
        state_->available = size;
        state_->cv.notify_all();
    }

    Result<void> finish(std::uint64_t size) override {
        std::unique_lock lock(state_->mutex);
        if (state_->finished) return make_error(Errc::Internal, state_->describe() + ": finished twice");
        if (size < state_->available) {
            state_->abandoned = true;
            state_->cv.notify_all();
            state_->cv.wait(lock, [&] { return state_->done; });
            return make_error(Errc::Io, state_->describe() + ": the file shrank to " + std::to_string(size) + " bytes");
        }
        state_->final_size = size;
        state_->available = size;
        state_->finished = true;
        state_->cv.notify_all();
        state_->cv.wait(lock, [&] { return state_->done; });
        return state_->result;
    }

private:
    std::shared_ptr<StreamState> state_;
};

struct HttpClient::Impl {
    explicit Impl(HttpOptions options) : options_(std::move(options)) {
        options_.max_connections = std::max(options_.max_connections, 1L);
        options_.max_retries = std::max(options_.max_retries, 0);
        std::call_once(g_curl_init_once, [] { g_curl_init_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK; });
        if (!g_curl_init_ok) {
            log::error("http", "curl_global_init failed; every request will fail");
            return;
        }
        multi_ = curl_multi_init();
        if (multi_ == nullptr) {
            log::error("http", "curl_multi_init failed; every request will fail");
            return;
        }
        curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, options_.max_connections);
        curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, options_.max_connections);
        curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, options_.max_connections);
        thread_ = std::thread([this] { run(); });
    }

    ~Impl() {
        {
            std::lock_guard lock(streams_mutex_);
            for (auto& st : streams_) {
                std::lock_guard sl(st->mutex);
                if (!st->done) st->abandoned = true;
                st->cv.notify_all();
            }
        }
        for (auto& st : streams_) st->thread.join();
        if (multi_ == nullptr) return;
        {
            std::lock_guard lock(queue_mutex_);
            stopping_ = true;
        }
        curl_multi_wakeup(multi_);
        thread_.join();
        for (CURL* easy : idle_) curl_easy_cleanup(easy);
        curl_multi_cleanup(multi_);
    }

    Result<std::unique_ptr<StreamingPut>> start_stream(const std::string& url, const std::string& path) {
        if (multi_ == nullptr) return make_error(Errc::Internal, "streaming PUT " + url + ": libcurl failed to initialise");
        auto st = std::make_shared<StreamState>();
        st->url = url;
        st->path = path;
        st->options = options_;
        st->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (st->fd < 0) {
            const int err = errno;
            return make_error(Errc::Io, st->describe() + ": cannot open: " + std::strerror(err));
        }
        std::lock_guard lock(streams_mutex_);
        // Join the streams that ended since the last start.
        for (auto it = streams_.begin(); it != streams_.end();) {
            bool done = false;
            {
                std::lock_guard sl((*it)->mutex);
                done = (*it)->done;
            }
            if (done) {
                (*it)->thread.join();
                it = streams_.erase(it);
            } else {
                ++it;
            }
        }
        st->thread = std::thread([raw = st.get()] { raw->run(); });
        streams_.push_back(st);
        return std::unique_ptr<StreamingPut>(std::make_unique<StreamingPutHandle>(std::move(st)));
    }

    // Queues `job`; the caller took its future beforehand.
    void submit(std::unique_ptr<Job> job) {
        if (multi_ == nullptr) {
            job->set_error(make_error(Errc::Internal, job->describe() + ": libcurl failed to initialise (http-init)"));
            return;
        }
        {
            std::lock_guard lock(queue_mutex_);
            if (!stopping_) {
                submitted_.push_back(std::move(job));
            }
        }
        if (job) {
            job->set_error(make_error(Errc::Network, job->describe() + ": client shutting down"));
            return;
        }
        curl_multi_wakeup(multi_);
    }

    // Validates the job's headers, then queues it; fails it if a header is bad.
    void submit_checked(std::unique_ptr<Job> job) {
        for (const auto& h : job->options.headers) {
            if (h.find_first_of("\r\n") != std::string::npos || h.find(':') == std::string::npos) {
                // Only the name is quoted: a value may be a secret (a bearer token).
                job->set_error(make_error(Errc::InvalidArgument,
                                          job->describe() + ": bad header '" + h.substr(0, h.find(':')) + "'"));
                return;
            }
        }
        if (const auto& sig = job->options.sigv4) {
            if (sig->region.empty() || sig->service.empty() || sig->access_key_id.empty() ||
                sig->region.find(':') != std::string::npos || sig->service.find(':') != std::string::npos) {
                job->set_error(make_error(Errc::InvalidArgument,
                                          job->describe() + ": SigV4 needs a region, a service and an access key id"));
                return;
            }
            job->sigv4_param = "aws:amz:" + sig->region + ":" + sig->service;
        }
        submit(std::move(job));
    }

    // Queues a PUT of `source`.
    std::future<Result<void>> submit_put(const std::string& url, std::unique_ptr<UploadSource> source,
                                         RequestOptions options) {
        auto job = std::make_unique<Job>();
        job->kind = Kind::Put;
        job->url = url;
        job->upload = std::move(source);
        job->options = std::move(options);
        auto future = job->promise.emplace<1>().get_future();
        submit_checked(std::move(job));
        return future;
    }

    HttpClient::Stats stats() const {
        HttpClient::Stats s;
        s.requests = requests_.load(std::memory_order_relaxed);
        s.retries = retries_.load(std::memory_order_relaxed);
        s.bytes = bytes_.load(std::memory_order_relaxed);
        s.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
        s.connections = connections_.load(std::memory_order_relaxed);
        return s;
    }

    // ---- I/O thread only below ----

    void run() {
        for (;;) {
            if (!take_submitted()) break;
            const auto now = Clock::now();
            promote_due_retries(now);
            start_ready();
            int running = 0;
            curl_multi_perform(multi_, &running);
            bool progressed = finish_done();
            progressed = abort_stalled(Clock::now()) || progressed;
            // A finished transfer frees a slot or queues a retry: loop at once.
            if (progressed) continue;
            curl_multi_poll(multi_, nullptr, 0, poll_timeout_ms(Clock::now()), nullptr);
        }
        shut_down();
    }

    // Moves submitted jobs to ready_. Returns false when the client is stopping.
    bool take_submitted() {
        std::vector<std::unique_ptr<Job>> jobs;
        {
            std::lock_guard lock(queue_mutex_);
            if (stopping_) return false;
            jobs.swap(submitted_);
        }
        for (auto& job : jobs) ready_.push_back(std::move(job));
        return true;
    }

    void promote_due_retries(Clock::time_point now) {
        while (!waiting_.empty() && waiting_.begin()->first <= now) {
            ready_.push_back(std::move(waiting_.begin()->second));
            waiting_.erase(waiting_.begin());
        }
    }

    void start_ready() {
        // We cap concurrency ourselves rather than let curl queue transfers
        // internally, so a transfer's timers start only once it has a slot.
        while (!ready_.empty() && active_.size() < static_cast<std::size_t>(options_.max_connections)) {
            auto job = std::move(ready_.front());
            ready_.pop_front();
            start(std::move(job));
        }
    }

    CURL* take_easy() {
        if (!idle_.empty()) {
            CURL* easy = idle_.back();
            idle_.pop_back();
            return easy;
        }
        return curl_easy_init();
    }

    void release_easy(CURL* easy) {
        curl_easy_reset(easy);
        if (idle_.size() < static_cast<std::size_t>(options_.max_connections)) {
            idle_.push_back(easy);
        } else {
            curl_easy_cleanup(easy);
        }
    }

    void start(std::unique_ptr<Job> job) {
        auto t = std::make_unique<Transfer>();
        t->job = std::move(job);
        t->max_body = options_.max_body_bytes;
        t->easy = take_easy();
        if (t->easy == nullptr) {
            t->job->set_error(make_error(Errc::Internal, t->job->describe() + ": curl_easy_init failed (http-easy)"));
            return;
        }
        try {
            if (t->job->kind == Kind::Range) t->body.reserve(static_cast<std::size_t>(t->job->length));
            if (t->job->header_list == nullptr) build_headers(*t->job);
        } catch (const std::bad_alloc&) {
            release_easy(t->easy);
            t->job->set_error(make_error(Errc::Internal, t->job->describe() + ": out of memory for the body (http-oom)"));
            return;
        }
        CURL* e = t->easy;
        Transfer* raw = t.get();
        curl_easy_setopt(e, CURLOPT_URL, raw->job->url.c_str());
        // Send the path as built: S3 keys may hold "." and ".." segments, which
        // S3 never resolves, and libcurl would otherwise squash them (writing
        // and reading "a/d" for the key "a/x/../d").
        curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        switch (raw->job->kind) {
            case Kind::Range:
            case Kind::Whole:
                curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
                break;
            case Kind::Head:
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
                break;
            case Kind::Put:
                set_upload(e, raw, false);
                break;
            case Kind::Call: {
                const std::string& m = raw->job->method;
                if (m == "HEAD") {
                    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
                } else if (m == "PUT") {
                    set_upload(e, raw, false);
                } else if (m == "POST") {
                    set_upload(e, raw, true);
                } else {
                    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
                    if (m != "GET") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
                }
                break;
            }
        }
        if (raw->job->header_list != nullptr) curl_easy_setopt(e, CURLOPT_HTTPHEADER, raw->job->header_list);
        if (const auto& sig = raw->job->options.sigv4) {
            curl_easy_setopt(e, CURLOPT_AWS_SIGV4, raw->job->sigv4_param.c_str());
            curl_easy_setopt(e, CURLOPT_USERNAME, sig->access_key_id.c_str());
            curl_easy_setopt(e, CURLOPT_PASSWORD, sig->secret_access_key.c_str());
        }
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout.count()));
        curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
        // A redirected PUT/POST/DELETE is a permanent HttpStatus error rather
        // than a guess at which method and body the new location wants. Signed
        // requests are not redirected either: the signature covers the host.
        const bool follow = !raw->job->options.sigv4 && raw->job->kind != Kind::Put &&
                            (raw->job->kind != Kind::Call || raw->job->method == "GET" || raw->job->method == "HEAD");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(e, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        // The stall check above catches silence; this catches a drip (a byte
        // now and then) that would otherwise keep one attempt alive for ever.
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, kMinBytesPerSecond);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                         std::max(1L, static_cast<long>((options_.stall_timeout.count() + 999) / 1000)));
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, raw);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, raw);
#if LIBCURL_VERSION_NUM >= 0x075000
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &on_prereq);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, raw);
#endif
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, raw->error_buffer);
        curl_easy_setopt(e, CURLOPT_PRIVATE, raw);
        std::string range;
        if (raw->job->kind == Kind::Range) {
            range = range_text(raw->job->offset, raw->job->offset + raw->job->length - 1);
            curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());  // curl copies strings
        }
        raw->added = raw->last_progress = Clock::now();
        ++raw->job->attempts;
        requests_.fetch_add(1, std::memory_order_relaxed);
        if (const CURLMcode rc = curl_multi_add_handle(multi_, e); rc != CURLM_OK) {
            release_easy(e);
            raw->job->set_error(make_error(
                Errc::Internal, raw->job->describe() + ": curl_multi_add_handle: " + curl_multi_strerror(rc)));
            return;
        }
        active_.emplace(e, std::move(t));
    }

    // Body from job->upload (PUT, or POST when `post`); a POST without one sends an empty body.
    static void set_upload(CURL* e, Transfer* raw, bool post) {
        const auto size = static_cast<curl_off_t>(raw->job->upload ? raw->job->upload->size() : 0);
        if (post) {
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, size);
            if (!raw->job->upload) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
                return;
            }
        } else {
            curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, size);
        }
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, kUploadBufferSize);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, &on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, raw);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, raw);
    }

    // "Expect:" stops curl from waiting for a 100 Continue before large bodies.
    // Not on signed requests: libcurl 7.88 would sign the empty header it
    // then does not send, and the signature would never match. Those keep
    // curl's own Expect: 100-continue (unsigned, as curl adds it itself),
    // which also lets S3 refuse a bad signature before the body is sent.
    static void build_headers(Job& job) {
        auto append = [&](const std::string& h) {
            curl_slist* next = curl_slist_append(job.header_list, h.c_str());
            if (next == nullptr) throw std::bad_alloc();
            job.header_list = next;
        };
        if ((job.upload || job.kind == Kind::Put) && !job.options.sigv4) append("Expect:");
        for (const auto& h : job.options.headers) append(h);
    }

    // Handles every transfer curl reports as done. Returns true if any was.
    bool finish_done() {
        bool any = false;
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
            if (msg->msg != CURLMSG_DONE) continue;
            const CURLcode code = msg->data.result;
            finish(msg->easy_handle, code);
            any = true;
        }
        return any;
    }

    bool abort_stalled(Clock::time_point now) {
        std::vector<CURL*> stalled;
        for (const auto& [easy, t] : active_) {
            if (now >= stall_deadline(*t)) stalled.push_back(easy);
        }
        for (CURL* easy : stalled) {
            active_.at(easy)->stalled = true;
            finish(easy, CURLE_OPERATION_TIMEDOUT);
        }
        return !stalled.empty();
    }

    Clock::time_point stall_deadline(const Transfer& t) const {
        // Before the request is sent, curl's connect timeout governs; this is
        // only a backstop in case a transfer never gets that far.
        if (t.request_sent) return t.last_progress + options_.stall_timeout;
        return t.added + options_.connect_timeout + options_.stall_timeout;
    }

    int poll_timeout_ms(Clock::time_point now) const {
        auto next = now + milliseconds(1000);
        if (!waiting_.empty()) next = std::min(next, waiting_.begin()->first);
        for (const auto& [easy, t] : active_) next = std::min(next, stall_deadline(*t));
        if (next <= now) return 0;
        // Round up so we never wake a hair early and spin.
        const auto ms = std::chrono::ceil<milliseconds>(next - now).count();
        return static_cast<int>(ms);
    }

    void finish(CURL* easy, CURLcode code) {
        auto node = active_.extract(easy);
        std::unique_ptr<Transfer> t = std::move(node.mapped());
        curl_multi_remove_handle(multi_, easy);
        long new_connections = 0;
        curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
        connections_.fetch_add(static_cast<std::uint64_t>(std::max(new_connections, 0L)), std::memory_order_relaxed);
        bytes_.fetch_add(t->received_total, std::memory_order_relaxed);
        curl_off_t uploaded = 0;
        curl_easy_getinfo(easy, CURLINFO_SIZE_UPLOAD_T, &uploaded);
        bytes_sent_.fetch_add(static_cast<std::uint64_t>(std::max<curl_off_t>(uploaded, 0)), std::memory_order_relaxed);

        Outcome outcome = evaluate(*t, code, options_.stall_timeout);
        release_easy(easy);
        t->easy = nullptr;
        std::unique_ptr<Job> job = std::move(t->job);
        t.reset();
        const std::string where = job->describe();
        switch (outcome.action) {
            case Outcome::Action::Succeed:
                switch (job->kind) {
                    case Kind::Range:
                    case Kind::Whole:
                        std::get<0>(job->promise).set_value(std::move(outcome.body));
                        break;
                    case Kind::Put:
                        std::get<1>(job->promise).set_value(Result<void>{});
                        break;
                    case Kind::Head:
                        std::get<2>(job->promise).set_value(outcome.length);
                        break;
                    case Kind::Call:
                        std::get<3>(job->promise).set_value(std::move(outcome.response));
                        break;
                }
                return;
            case Outcome::Action::Fail: {
                std::string message = where + ": " + outcome.detail;
                if (job->attempts > 1) message += " after " + std::to_string(job->attempts) + " attempts";
                job->set_error(make_error(outcome.code, std::move(message)));
                return;
            }
            case Outcome::Action::Retry:
                break;
        }
        if (job->attempts > options_.max_retries) {
            std::string message =
                where + ": " + outcome.detail + " after " + std::to_string(job->attempts) + " attempts";
            log::warn("http", message);
            job->set_error(make_error(outcome.code, std::move(message)));
            return;
        }
        const milliseconds delay = backoff(job->attempts);
        log::warn("http", where + ": " + outcome.detail + "; retry " + std::to_string(job->attempts) + "/" +
                              std::to_string(options_.max_retries) + " in " + std::to_string(delay.count()) +
                              " ms");
        retries_.fetch_add(1, std::memory_order_relaxed);
        waiting_.emplace(Clock::now() + delay, std::move(job));
    }

    // Delay before retry number `retry` (1-based): initial, doubling, capped.
    milliseconds backoff(int retry) const {
        milliseconds delay = options_.backoff_initial;
        for (int i = 1; i < retry && delay < options_.backoff_max; ++i) delay *= 2;
        return std::min(delay, options_.backoff_max);
    }

    void shut_down() {
        auto fail = [](Job& job) {
            job.set_error(make_error(Errc::Network, job.describe() + ": client shutting down"));
        };
        for (auto& [easy, t] : active_) {
            curl_multi_remove_handle(multi_, easy);
            release_easy(easy);
            fail(*t->job);
        }
        active_.clear();
        for (auto& [due, job] : waiting_) fail(*job);
        waiting_.clear();
        for (auto& job : ready_) fail(*job);
        ready_.clear();
        std::vector<std::unique_ptr<Job>> jobs;
        {
            std::lock_guard lock(queue_mutex_);
            jobs.swap(submitted_);
        }
        for (auto& job : jobs) fail(*job);
    }

    HttpOptions options_;
    CURLM* multi_ = nullptr;  // set before the thread starts, freed after it joins

    // Lock order: queue_mutex_ is a leaf; it is never held while calling curl
    // or fulfilling a promise.
    std::mutex queue_mutex_;
    std::vector<std::unique_ptr<Job>> submitted_;  // guarded by queue_mutex_
    bool stopping_ = false;                        // guarded by queue_mutex_

    // I/O thread only.
    std::deque<std::unique_ptr<Job>> ready_;
    std::multimap<Clock::time_point, std::unique_ptr<Job>> waiting_;  // retries by due time
    std::unordered_map<CURL*, std::unique_ptr<Transfer>> active_;
    std::vector<CURL*> idle_;

    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> retries_{0};
    std::atomic<std::uint64_t> bytes_{0};
    std::atomic<std::uint64_t> bytes_sent_{0};
    std::atomic<std::uint64_t> connections_{0};

    std::mutex streams_mutex_;
    std::vector<std::shared_ptr<StreamState>> streams_;  // running, or ended and not yet joined
    std::thread thread_;  // last: started after everything above exists
};

HttpClient::HttpClient(HttpOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

HttpClient::~HttpClient() = default;

std::future<Result<std::string>> HttpClient::read_range(const std::string& url, std::uint64_t offset,
                                                        std::uint64_t length) {
    return read_range(url, offset, length, RequestOptions{});
}

std::future<Result<std::string>> HttpClient::read_range(const std::string& url, std::uint64_t offset,
                                                        std::uint64_t length, RequestOptions options) {
    auto job = std::make_unique<Job>();
    job->options = std::move(options);
    job->kind = Kind::Range;
    job->url = url;
    job->offset = offset;
    job->length = length;
    auto& promise = std::get<0>(job->promise);
    auto future = promise.get_future();
    if (length == 0) {
        promise.set_value(std::string{});
        return future;
    }
    if (offset > UINT64_MAX - length || length > impl_->options_.max_body_bytes) {
        promise.set_value(make_error(Errc::InvalidArgument, "GET " + url + " offset " + std::to_string(offset) +
                                                                     " length " + std::to_string(length) +
                                                                     ": range out of bounds"));
        return future;
    }
    impl_->submit_checked(std::move(job));
    return future;
}

std::future<Result<std::string>> HttpClient::get(const std::string& url, RequestOptions options) {
    auto job = std::make_unique<Job>();
    job->kind = Kind::Whole;
    job->url = url;
    job->options = std::move(options);
    auto future = std::get<0>(job->promise).get_future();
    impl_->submit_checked(std::move(job));
    return future;
}

std::future<Result<void>> HttpClient::put(const std::string& url, std::shared_ptr<const std::string> body,
                                          std::vector<std::string> headers) {
    if (!body) body = std::make_shared<const std::string>();
    return impl_->submit_put(url, std::make_unique<BytesSource>(std::move(body)), RequestOptions{std::move(headers), {}});
}

std::future<Result<void>> HttpClient::put_file(const std::string& url, const std::string& path,
                                               std::vector<std::string> headers) {
    auto source = FileSource::open(path);
    if (!source) {
        std::promise<Result<void>> promise;
        promise.set_value(make_error(Errc::Io, "PUT " + url + ": " + source.error().message));
        return promise.get_future();
    }
    return impl_->submit_put(url, std::move(source).value(), RequestOptions{std::move(headers), {}});
}

Result<std::unique_ptr<StreamingPut>> HttpClient::stream_put(const std::string& url, const std::string& path) {
    return impl_->start_stream(url, path);
}

std::future<Result<std::uint64_t>> HttpClient::head(const std::string& url, RequestOptions options) {
    auto job = std::make_unique<Job>();
    job->kind = Kind::Head;
    job->url = url;
    job->options = std::move(options);
    auto future = job->promise.emplace<2>().get_future();
    impl_->submit_checked(std::move(job));
    return future;
}

std::future<Result<HttpResponse>> HttpClient::send(HttpRequest request) {
    auto job = std::make_unique<Job>();
    job->kind = Kind::Call;
    job->method = std::move(request.method);
    job->url = std::move(request.url);
    job->options = std::move(request.options);
    auto& promise = job->promise.emplace<3>();
    auto future = promise.get_future();
    const std::string& m = job->method;
    if (m != "GET" && m != "HEAD" && m != "PUT" && m != "POST" && m != "DELETE" && m != "MOVE") {
        promise.set_value(make_error(Errc::InvalidArgument, m + " " + job->url + ": unsupported method"));
        return future;
    }
    if (!request.body_file.empty()) {
        auto source = FileSource::open(request.body_file, request.file_offset, request.file_length);
        if (!source) {
            promise.set_value(make_error(Errc::Io, m + " " + job->url + ": " + source.error().message));
            return future;
        }
        job->upload = std::move(source).value();
    } else if (request.body) {
        job->upload = std::make_unique<BytesSource>(std::move(request.body));
    }
    if (job->upload && m != "PUT" && m != "POST") {
        promise.set_value(make_error(Errc::InvalidArgument, job->describe() + ": only PUT and POST carry a body"));
        return future;
    }
    impl_->submit_checked(std::move(job));
    return future;
}

const std::string* HttpResponse::header(std::string_view lowercase_name) const {
    for (const auto& [name, value] : headers) {
        if (name == lowercase_name) return &value;
    }
    return nullptr;
}

HttpClient::Stats HttpClient::stats() const { return impl_->stats(); }

}  // namespace shelbyfs
