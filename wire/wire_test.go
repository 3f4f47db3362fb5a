package wire_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/p2pkey/p2pkey/wire"
	"github.com/p2pkey/p2pkey/wire/internal/testpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const limit = 1 << 10

func encode(t testing.TB, m proto.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := wire.WriteMsg(&buf, m, 1<<20); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	in := &testpb.Msg{Version: 2, Body: []byte("hello")}
	var out testpb.Msg
	if err := wire.ReadMsg(bytes.NewReader(encode(t, in)), &out, limit, 1, 2); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("read %v, wrote %v", &out, in)
	}
}

// Two messages read from one *bufio.Reader: ReadMsg does not buffer past
// the first when it is handed a ByteReader.
func TestReadMsgKeepsCallersBuffer(t *testing.T) {
	b := append(encode(t, &testpb.Msg{Version: 1, Body: []byte("a")}), encode(t, &testpb.Msg{Version: 1, Body: []byte("b")})...)
	br := bufio.NewReader(bytes.NewReader(b))
	for _, want := range []string{"a", "b"} {
		var m testpb.Msg
		if err := wire.ReadMsg(br, &m, limit, 1); err != nil {
			t.Fatal(err)
		}
		if string(m.GetBody()) != want {
			t.Fatalf("body %q, want %q", m.GetBody(), want)
		}
	}
}

// errAfter returns data, then err.
type errAfter struct {
	data []byte
	err  error
}

func (r *errAfter) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// timeoutErr is a net.Error that timed out, as yamux and QUIC streams
// return past their deadline.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o deadline reached" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestReadMsgErrors(t *testing.T) {
	whole := encode(t, &testpb.Msg{Version: 1, Body: bytes.Repeat([]byte("x"), 100)})
	huge := protowire.AppendVarint(nil, 1<<40)
	for _, tc := range []struct {
		name     string
		r        io.Reader
		versions []uint32
		want     error
		notWant  []error
		alsoIs   error
	}{
		{name: "empty stream", r: bytes.NewReader(nil), versions: []uint32{1}, want: wire.ErrIncomplete, alsoIs: io.EOF},
		{name: "prefix only", r: bytes.NewReader(whole[:1]), versions: []uint32{1}, want: wire.ErrIncomplete, alsoIs: io.ErrUnexpectedEOF},
		{name: "truncated", r: bytes.NewReader(whole[:50]), versions: []uint32{1}, want: wire.ErrIncomplete},
		{name: "reset mid-message", r: &errAfter{whole[:50], errors.New("stream reset")}, versions: []uint32{1}, want: wire.ErrIncomplete},
		// The failure the issue names: a read that times out is not malformed.
		{name: "deadline (os)", r: &errAfter{whole[:50], os.ErrDeadlineExceeded}, versions: []uint32{1}, want: wire.ErrTimeout, alsoIs: os.ErrDeadlineExceeded},
		{name: "deadline (net.Error)", r: &errAfter{nil, timeoutErr{}}, versions: []uint32{1}, want: wire.ErrTimeout},
		// The prefix alone is refused: the reader would block or fail
		// after it, and ReadMsg must not wait for (or allocate) 1 TiB.
		{name: "over the limit", r: &errAfter{huge, errors.New("must not be read")}, versions: []uint32{1}, want: wire.ErrTooLarge},
		{name: "just over the limit", r: bytes.NewReader(encode(t, &testpb.Msg{Version: 1, Body: make([]byte, limit)})), versions: []uint32{1}, want: wire.ErrTooLarge},
		{name: "varint overflow", r: bytes.NewReader(bytes.Repeat([]byte{0xff}, 11)), versions: []uint32{1}, want: wire.ErrMalformed},
		{name: "not a message", r: bytes.NewReader([]byte{3, 0xff, 0xff, 0xff}), versions: []uint32{1}, want: wire.ErrMalformed},
		{name: "unknown version", r: bytes.NewReader(whole), versions: []uint32{2, 3}, want: wire.ErrBadVersion},
		{name: "no version spoken", r: bytes.NewReader(whole), versions: nil, want: wire.ErrBadVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m testpb.Msg
			err := wire.ReadMsg(tc.r, &m, limit, tc.versions...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if tc.alsoIs != nil && !errors.Is(err, tc.alsoIs) {
				t.Fatalf("err %v does not keep %v", err, tc.alsoIs)
			}
			n := 0
			for _, s := range []error{wire.ErrTooLarge, wire.ErrBadVersion, wire.ErrMalformed, wire.ErrIncomplete, wire.ErrTimeout} {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("err %v matches %d sentinels, want exactly one", err, n)
			}
		})
	}
}

// countWrites counts Write calls.
type countWrites struct {
	bytes.Buffer
	n int
}

func (w *countWrites) Write(p []byte) (int, error) { w.n++; return w.Buffer.Write(p) }

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriteMsg(t *testing.T) {
	var w countWrites
	m := &testpb.Msg{Version: 1, Body: make([]byte, 300)}
	if err := wire.WriteMsg(&w, m, limit); err != nil {
		t.Fatal(err)
	}
	if w.n != 1 {
		t.Fatalf("%d writes, want 1 (prefix and message together)", w.n)
	}
	var out testpb.Msg
	if err := wire.ReadMsg(&w, &out, limit, 1); err != nil || !proto.Equal(m, &out) {
		t.Fatalf("read back %v, %v", &out, err)
	}

	w = countWrites{}
	err := wire.WriteMsg(&w, &testpb.Msg{Version: 1, Body: make([]byte, limit)}, limit)
	if !errors.Is(err, wire.ErrTooLarge) || w.n != 0 {
		t.Fatalf("oversized write: %v after %d writes, want ErrTooLarge and none", err, w.n)
	}
	err = wire.WriteMsg(failWriter{os.ErrDeadlineExceeded}, m, limit)
	if !errors.Is(err, wire.ErrTimeout) {
		t.Fatalf("write past the deadline: %v, want ErrTimeout", err)
	}
}

// FuzzReadMsg: any bytes give either a message of a spoken version or an
// error wrapping exactly one refusal sentinel; a bytes.Reader never fails,
// so never a timeout. A message read is written back the same.
func FuzzReadMsg(f *testing.F) {
	f.Add(encode(f, &testpb.Msg{Version: 1, Body: []byte("x")}))
	f.Add(encode(f, &testpb.Msg{Version: 3, Error: "no"}))
	f.Add(protowire.AppendVarint(nil, 1<<40))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m testpb.Msg
		err := wire.ReadMsg(bytes.NewReader(data), &m, limit, 1, 2)
		if err != nil {
			switch {
			case errors.Is(err, wire.ErrTimeout):
				t.Fatalf("a bytes.Reader timed out: %v", err)
			case errors.Is(err, wire.ErrTooLarge), errors.Is(err, wire.ErrBadVersion),
				errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrIncomplete):
			default:
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if v := m.GetVersion(); v != 1 && v != 2 {
			t.Fatalf("accepted version %d", v)
		}
		var buf bytes.Buffer
		if err := wire.WriteMsg(&buf, &m, limit); err != nil {
			t.Fatalf("a message read within the limit does not write back: %v", err)
		}
		var again testpb.Msg
		if err := wire.ReadMsg(&buf, &again, limit, 1, 2); err != nil || !proto.Equal(&m, &again) {
			t.Fatalf("round trip: %v, %v", &again, err)
		}
	})
}
