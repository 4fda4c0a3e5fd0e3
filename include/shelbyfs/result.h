// Error codes, the Error type, Result<T>, and the one errno mapping.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace shelbyfs {

/// Domain error codes. Every one maps to exactly one errno in to_errno().
enum class Errc {
    NotFound,
    NotDirectory,
    IsDirectory,
    ReadOnly,
    Network,      ///< transport failure after retries (refused, reset, timeout)
    HttpStatus,   ///< the server answered with a status we cannot use
    Integrity,    ///< bytes did not match the manifest's hash
    NoSpace,
    InvalidArgument,
    Io,           ///< local disk I/O failure
    Internal,
    Exists,       ///< the name is taken (EEXIST)
    NotEmpty,     ///< rmdir or rename over a non-empty directory
    NotSupported, ///< an operation or xattr namespace this filesystem does not offer
    NoData,       ///< no such extended attribute
    Permission,   ///< not allowed here (EPERM): reserved names, hard links
    TooBig,       ///< a buffer too small for the answer, or a value over its limit (ERANGE)
};

/// An error: a code plus a human-readable message naming what and where.
struct Error {
    Errc code;
    std::string message;
};

/// Map a domain error to the errno FUSE returns. Exhaustive, no default.
int to_errno(Errc code) noexcept;
/// Short stable name of a code, for logs ("Network", "Integrity", ...).
const char* errc_name(Errc code) noexcept;

/// Result<T>: either a value or an Error. A small stand-in for std::expected,
/// which g++ 12 does not ship in C++20 mode.
template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose
    Result(Error error) : v_(std::move(error)) {}  // NOLINT
    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

private:
    std::variant<T, Error> v_;
};

/// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
    bool ok() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }
    const Error& error() const& { return error_; }
    Error&& error() && { return std::move(error_); }

private:
    Error error_{Errc::Internal, {}};
    bool ok_ = true;
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

}  // namespace shelbyfs
