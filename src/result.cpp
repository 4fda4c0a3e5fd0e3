// The one place that maps shelbyfs error codes to errno values.
#include "shelbyfs/result.h"

#include <cerrno>

namespace shelbyfs {

int to_errno(Errc code) noexcept {
    switch (code) {
        case Errc::NotFound: return ENOENT;
        case Errc::NotDirectory: return ENOTDIR;
        case Errc::IsDirectory: return EISDIR;
        case Errc::ReadOnly: return EROFS;
        case Errc::Network: return EIO;
        case Errc::HttpStatus: return EIO;
        case Errc::Integrity: return EIO;
        case Errc::NoSpace: return ENOSPC;
        case Errc::InvalidArgument: return EINVAL;
        case Errc::Io: return EIO;
        case Errc::Internal: return EIO;
        case Errc::Exists: return EEXIST;
        case Errc::NotEmpty: return ENOTEMPTY;
        case Errc::NotSupported: return ENOTSUP;
        case Errc::NoData: return ENODATA;
        case Errc::Permission: return EPERM;
        case Errc::TooBig: return ERANGE;
    }
    return EIO;
}

const char* errc_name(Errc code) noexcept {
    switch (code) {
        case Errc::NotFound: return "NotFound";
        case Errc::NotDirectory: return "NotDirectory";
        case Errc::IsDirectory: return "IsDirectory";
        case Errc::ReadOnly: return "ReadOnly";
        case Errc::Network: return "Network";
        case Errc::HttpStatus: return "HttpStatus";
        case Errc::Integrity: return "Integrity";
        case Errc::NoSpace: return "NoSpace";
        case Errc::InvalidArgument: return "InvalidArgument";
        case Errc::Io: return "Io";
        case Errc::Internal: return "Internal";
        case Errc::Exists: return "Exists";
        case Errc::NotEmpty: return "NotEmpty";
        case Errc::NotSupported: return "NotSupported";
        case Errc::NoData: return "NoData";
        case Errc::Permission: return "Permission";
        case Errc::TooBig: return "TooBig";
    }
    return "Unknown";
}

}  // namespace shelbyfs
