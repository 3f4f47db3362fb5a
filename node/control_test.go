//go:build unix

package node

import (
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/internal/testkit"
)

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestControlSocketUmask is the umask path of rule S5: under a umask of 000
// the socket is born 0777, but at that moment it is in a directory only this
// user can enter, and nothing is at the control path yet; the control path
// only ever holds the socket at mode 0600. Binding at the control path and
// chmod-ing afterwards (the old code) fails the "nothing at path" check.
func TestControlSocketUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	dir := shortTempDir(t)
	path := SocketPath(dir)
	called := false
	ln, err := listenControl(path, func(tmp string) {
		called = true
		fi, err := os.Lstat(tmp)
		if err != nil {
			t.Fatalf("bound socket: %v", err)
		}
		if fi.Mode()&fs.ModeSocket == 0 {
			t.Fatalf("%s is not a socket: %v", tmp, fi.Mode())
		}
		t.Logf("socket born with mode %04o under umask 000", fi.Mode().Perm())
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("the control path exists before the socket is 0600: %v", err)
		}
		parent, err := os.Stat(filepath.Dir(tmp))
		if err != nil {
			t.Fatal(err)
		}
		if got := parent.Mode().Perm(); got != 0o700 {
			t.Fatalf("the socket is born in a directory of mode %04o, want 0700", got)
		}
		if filepath.Dir(filepath.Dir(tmp)) != dir {
			t.Fatalf("temporary socket %s is not in the data directory (rename must not cross filesystems)", tmp)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if !called {
		t.Fatal("bound hook not called")
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v, want a 0600 socket", fi.Mode())
	}
	// The temporary directory is gone, and the renamed socket answers.
	if left, _ := filepath.Glob(filepath.Join(dir, ".ctl*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()
}

func randPeer(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serveTest serves handler on a control socket in a fresh data directory
// and returns a Client for it.
func serveTest(t *testing.T, handler http.Handler) *Client {
	t.Helper()
	dir := shortTempDir(t)
	ln, err := listenControl(SocketPath(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(dir)
}

// TestControlLockErrors: a lock error reaches the client as the node wrote
// it (no prefix added, none doubled), matches ErrLocked whatever the
// handler's status, and an unescrowed node's error matches ErrUnescrowed.
func TestControlLockErrors(t *testing.T) {
	var send error
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusBadRequest, send)
	})
	c := serveTest(t, mux)
	ctx := ctxT(t, 10*time.Second)

	send = ErrUnescrowed
	_, err := c.Key(ctx, "p", false)
	if !errors.Is(err, ErrUnescrowed) || !errors.Is(err, ErrLocked) {
		t.Fatalf("unescrowed: %v does not match ErrUnescrowed and ErrLocked", err)
	}
	if err.Error() != ErrUnescrowed.Error() {
		t.Fatalf("message %q, want %q", err, ErrUnescrowed)
	}
	if !testkit.ErrorSays(err, "a cluster of one cannot protect K: invite a second node") {
		t.Fatalf("message %q", err)
	}

	send = errors.Join(errors.New("not escrowed yet"), ErrLocked)
	_, err = c.Key(ctx, "p", false)
	if !errors.Is(err, ErrLocked) || errors.Is(err, ErrUnescrowed) {
		t.Fatalf("locked: %v", err)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusLocked {
		t.Fatalf("locked: %#v", err)
	}

	send = errors.New("a key purpose is required")
	_, err = c.Key(ctx, "p", false)
	if errors.Is(err, ErrLocked) || err.Error() != "a key purpose is required" {
		t.Fatalf("plain error: %v", err)
	}
}

// TestControlVotes: remove and reinstate carry the node's VoteResult to the
// client unchanged, and an unknown member is a 404.
func TestControlVotes(t *testing.T) {
	target, other := randPeer(t), randPeer(t)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/remove", func(w http.ResponseWriter, r *http.Request) {
		serveVote(w, r, func(_ context.Context, p peer.ID) (VoteResult, error) {
			if p != target {
				return VoteResult{}, ErrUnknownMember
			}
			return VoteResult{Target: p, Kind: "remove", Votes: 1, Needed: 2, Status: "suspended"}, nil
		})
	})
	mux.HandleFunc("POST /v1/reinstate", func(w http.ResponseWriter, r *http.Request) {
		serveVote(w, r, func(_ context.Context, p peer.ID) (VoteResult, error) {
			return VoteResult{Target: p, Kind: "reinstate", Votes: 2, Needed: 2, Final: true, Status: "active"}, nil
		})
	})
	c := serveTest(t, mux)
	ctx := ctxT(t, 10*time.Second)

	got, err := c.Remove(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if want := (VoteResult{Target: target, Kind: "remove", Votes: 1, Needed: 2, Status: "suspended"}); got != want {
		t.Fatalf("remove: %+v, want %+v", got, want)
	}
	got, err = c.Reinstate(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if want := (VoteResult{Target: target, Kind: "reinstate", Votes: 2, Needed: 2, Final: true, Status: "active"}); got != want {
		t.Fatalf("reinstate: %+v, want %+v", got, want)
	}
	var ae *APIError
	if _, err := c.Remove(ctx, other); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("unknown member: %v", err)
	}
}

// TestInviteTTLBounds: the control API refuses a TTL outside the bounds.
func TestInviteTTLBounds(t *testing.T) {
	for _, tc := range []struct {
		ttl  time.Duration
		want string
	}{
		{0, "at least 1m0s"},
		{time.Millisecond, "at least 1m0s"},
		{MinInviteTTL - time.Second, "at least 1m0s"},
		{MinInviteTTL, ""},
		{time.Hour, ""},
		{MaxInviteTTL, ""},
		{MaxInviteTTL + time.Second, "cap of 168h0m0s (7 days)"},
		{8760 * time.Hour, "cap of 168h0m0s"},
	} {
		err := inviteTTLBounds(tc.ttl)
		if (err == nil) != (tc.want == "") || (err != nil && !testkit.ErrorSays(err, tc.want)) {
			t.Errorf("ttl %v: %v, want %q", tc.ttl, err, tc.want)
		}
	}
}
