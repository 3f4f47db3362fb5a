package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Errors of ReadMsg, WriteMsg, Serve and Call. Each error these functions
// return wraps exactly one of the first five, and the error that caused it
// where there is one, so errors.Is works on both.
//
// ErrTooLarge, ErrBadVersion and ErrMalformed say the peer sent bytes this
// end refuses; ErrIncomplete and ErrTimeout say the stream failed before a
// whole message arrived, which says nothing about the peer's bytes. A read
// that times out is ErrTimeout, never ErrMalformed.
var (
	// ErrTooLarge: a message is over its size limit. A reader refuses the
	// length prefix before it allocates anything; a writer refuses to send.
	ErrTooLarge = errors.New("wire: message too large")
	// ErrBadVersion: a message carries a version this end does not speak.
	ErrBadVersion = errors.New("wire: unsupported message version")
	// ErrMalformed: the bytes are not a length-delimited message of the
	// expected type.
	ErrMalformed = errors.New("wire: malformed message")
	// ErrIncomplete: the stream ended, was reset or failed before a whole
	// message arrived. An empty stream also wraps io.EOF.
	ErrIncomplete = errors.New("wire: stream ended before a whole message")
	// ErrTimeout: the stream's deadline, or the caller's context, expired
	// first.
	ErrTimeout = errors.New("wire: timed out")

	// ErrNotSent is wrapped, beside one of the above where one applies, by
	// a Call whose request did not leave this end: the stream did not
	// open, or the request was not written. The peer has not seen it.
	ErrNotSent = errors.New("wire: request not sent")
)

// Versioned is a protobuf message with a version field, as every message
// on a p2pkey stream has (generated code provides GetVersion).
type Versioned interface {
	proto.Message
	GetVersion() uint32
}

// ReadMsg reads one uvarint-length-delimited protobuf message of at most
// maxSize bytes from r into m, and checks that m's version is one of
// versions (with none given, every version is refused).
//
// Unless r is an io.ByteReader (a *bufio.Reader, say), ReadMsg buffers it
// and may consume bytes past the message: read at most one message per
// stream direction this way, or pass the same *bufio.Reader to every call.
//
// ReadMsg sets no deadline; Serve and Call do, and a read that runs past the
// stream's deadline returns ErrTimeout.
func ReadMsg(r io.Reader, m Versioned, maxSize int, versions ...uint32) error {
	if maxSize <= 0 {
		return fmt.Errorf("wire: ReadMsg needs a positive size limit, not %d", maxSize)
	}
	br, ok := r.(protodelim.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	err := protodelim.UnmarshalOptions{MaxSize: int64(maxSize)}.UnmarshalFrom(br, m)
	if err != nil {
		return readError(err, maxSize)
	}
	if v := m.GetVersion(); !slices.Contains(versions, v) {
		return fmt.Errorf("%w: version %d, want one of %v", ErrBadVersion, v, versions)
	}
	return nil
}

// readError gives a failed read its sentinel. protodelim returns the
// reader's own errors unchanged and marks its own as proto.Error, which is
// how a stream that failed is told from bytes that do not parse.
func readError(err error, maxSize int) error {
	var tooLarge *protodelim.SizeTooLargeError
	switch {
	case errors.As(err, &tooLarge):
		return fmt.Errorf("%w: %d-byte message, limit %d", ErrTooLarge, tooLarge.Size, maxSize)
	case errors.Is(err, proto.Error):
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	case isTimeout(err):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	case err == io.EOF:
		return fmt.Errorf("%w: empty stream: %w", ErrIncomplete, err)
	default:
		return fmt.Errorf("%w: %w", ErrIncomplete, err)
	}
}

// isTimeout reports whether err is a deadline that expired: the stream's
// (os.ErrDeadlineExceeded, or a net.Error whose Timeout is true, as yamux
// and QUIC streams return) or a context's.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// WriteMsg writes m, uvarint-length-delimited, in a single Write. A message
// over maxSize bytes is not written (ErrTooLarge).
func WriteMsg(w io.Writer, m proto.Message, maxSize int) error {
	size := proto.Size(m)
	if size > maxSize {
		return fmt.Errorf("%w: %d-byte message, limit %d", ErrTooLarge, size, maxSize)
	}
	b := protowire.AppendVarint(make([]byte, 0, protowire.SizeVarint(uint64(size))+size), uint64(size))
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
	if err != nil {
		return fmt.Errorf("%w: encode: %w", ErrMalformed, err)
	}
	if _, err := w.Write(b); err != nil {
		return writeError(err)
	}
	return nil
}

func writeError(err error) error {
	if isTimeout(err) {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return fmt.Errorf("%w: %w", ErrIncomplete, err)
}
