package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// The control API is HTTP/1.1 with JSON bodies on a unix socket in the data
// directory, mode 0600 (rule S5). There is no network listener. Paths carry
// the API version.
const (
	controlVersion = "v1"
	maxControlBody = 64 << 10
)

type controlServer struct {
	srv  *http.Server
	ln   net.Listener
	path string
}

// InviteResponse is the body of POST /v1/invite.
type InviteResponse struct {
	Invite    string    `json:"invite"`
	ExpiresAt time.Time `json:"expires_at"`
}

// KeyRequest is the body of POST /v1/key.
type KeyRequest struct {
	Purpose string `json:"purpose"`
	Wait    bool   `json:"wait"`
}

// KeyResponse carries a derived key (never K itself, rule K3).
type KeyResponse struct {
	Purpose string `json:"purpose"`
	Key     []byte `json:"key"`
}

// controlStatus is the body of GET /v1/status: the node's Status and, under
// "recovery_kit", the last recovery kit it made (null if none).
type controlStatus struct {
	Status
	RecoveryKit *RecoveryKitStatus `json:"recovery_kit"`
}

// RecoveryKitRequest is the body of POST /v1/recovery-kit.
type RecoveryKitRequest struct {
	// Recipients are age recipients or SSH public keys (see
	// ParseRecoveryRecipient).
	Recipients []string `json:"recipients"`
}

// RecoveryKitResponse carries a recovery kit: an armoured age file
// encrypted, inside the daemon, to the request's recipients. K never
// crosses the socket in plaintext.
type RecoveryKitResponse struct {
	Kit  string          `json:"kit"`
	Info RecoveryKitInfo `json:"info"`
}

// Codes of the lock errors, which are not ledger sentinels.
const (
	codeLocked     = "locked"
	codeUnescrowed = "unescrowed"
)

// apiError is the body of every failed control request.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

func (n *Node) serveControl() (*controlServer, error) {
	path := n.cfg.SocketPath()
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := listenControl(path, nil)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, controlStatus{Status: n.Status(), RecoveryKit: n.RecoveryKitStatus()})
	})
	mux.HandleFunc("POST /v1/recovery-kit", func(w http.ResponseWriter, r *http.Request) {
		var req RecoveryKitRequest
		if !readJSON(w, r, &req) {
			return
		}
		kit, info, err := n.MakeRecoveryKit(req.Recipients)
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, RecoveryKitResponse{Kit: string(kit), Info: info})
	})
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Status().Members)
	})
	mux.HandleFunc("POST /v1/invite", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			TTL string `json:"ttl"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		var ttl time.Duration
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil {
				writeErr(w, http.StatusBadRequest, fmt.Errorf("ttl %q: want a duration such as 30m or 24h", req.TTL))
				return
			}
			if err := inviteTTLBounds(d); err != nil {
				writeErr(w, http.StatusBadRequest, err)
				return
			}
			ttl = d
		}
		inv, err := n.Invite(r.Context(), ttl)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusOK, InviteResponse{Invite: inv.Token, ExpiresAt: inv.ExpiresAt})
	})
	mux.HandleFunc("POST /v1/remove", func(w http.ResponseWriter, r *http.Request) {
		serveVote(w, r, n.Remove)
	})
	mux.HandleFunc("POST /v1/reinstate", func(w http.ResponseWriter, r *http.Request) {
		serveVote(w, r, n.Reinstate)
	})
	mux.HandleFunc("POST /v1/leave", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Leave(r.Context()); err != nil {
			writeErr(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"left": n.host.ID().String()})
		n.events.publish(Event{Type: EventLeft, Peer: n.host.ID()})
	})
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		var req KeyRequest
		if !readJSON(w, r, &req) {
			return
		}
		k, err := n.Key(r.Context(), req.Purpose, req.Wait)
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		defer clear(k)
		writeJSON(w, http.StatusOK, KeyResponse{Purpose: req.Purpose, Key: k})
	})
	mux.HandleFunc("POST /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		rep, err := n.Audit(r.Context())
		if err != nil {
			writeErr(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /v1/generations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Generations())
	})
	srv := &http.Server{
		Handler:           http.MaxBytesHandler(mux, maxControlBody),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	log.Infow("control API listening", "socket", path)
	return &controlServer{srv: srv, ln: ln, path: path}, nil
}

// removeStaleSocket removes a socket file left by a crashed daemon, but
// refuses if a live daemon answers on it.
func removeStaleSocket(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if daemonRunning(path) {
		return fmt.Errorf("another daemon is already running on this data directory (socket %s)", path)
	}
	return os.Remove(path)
}

func daemonRunning(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (c *controlServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.srv.Shutdown(ctx)
	c.ln.Close()
	os.Remove(c.path)
}

// serveVote records this node's removal or reinstatement vote (rule R2) and
// answers with the VoteResult.
func serveVote(w http.ResponseWriter, r *http.Request, vote func(context.Context, peer.ID) (VoteResult, error)) {
	var req struct {
		PeerID string `json:"peer_id"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	id, err := peer.Decode(req.PeerID)
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("peer ID %q: %w", req.PeerID, err))
		return
	}
	res, err := vote(r.Context(), id)
	if err != nil {
		status := http.StatusConflict
		if errors.Is(err, ErrUnknownMember) {
			status = http.StatusNotFound
		}
		writeErr(w, status, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// listenControl creates the control socket at path such that it is never
// reachable with a mode wider than 0600 (rule S5), whatever the umask.
//
// bind(2) gives a new socket the mode 0777 less the umask, and a socket's
// mode cannot be set before it exists, so a socket created at path and then
// chmod-ed is open to others for a moment under a permissive umask. Setting
// the umask instead (syscall.Umask) changes it for the whole process: other
// goroutines, another node in the same process or the embedding program,
// could create files under it or restore their own umask in the middle, so
// it is not race-free. Instead the socket is bound inside a fresh 0700
// directory next to path, which no other user can enter, made 0600 there,
// and renamed into place; rename(2) is atomic, so path is either absent (or
// the old file) or this socket at mode 0600. The listener keeps working
// after the rename: a unix socket is bound to its inode.
//
// bound, if not nil, is called with the socket's temporary path right after
// the bind and before the chmod (tests look at it there).
func listenControl(path string, bound func(tmp string)) (*net.UnixListener, error) {
	return listenUnix("control socket", path, 0o600, -1, bound)
}

// listenUnix creates a unix stream socket at path, as listenControl does,
// whose mode is mode and, when gid is not negative, whose group is gid, both
// set before the socket appears at path. what names the socket in errors.
func listenUnix(what, path string, mode fs.FileMode, gid int, bound func(tmp string)) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".ctl")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer os.RemoveAll(dir)
	// MkdirTemp asks for 0700; a umask can only narrow that, and a narrower
	// one (say 0777) would keep this process out of its own directory.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// The path it was bound to goes away with dir; close removes path.
	ln.SetUnlinkOnClose(false)
	if bound != nil {
		bound(tmp)
	}
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return ln, nil
}

// inviteTTLBounds reports whether ttl is an allowed invite lifetime: at
// least MinInviteTTL and at most MaxInviteTTL.
func inviteTTLBounds(ttl time.Duration) error {
	switch {
	case ttl < MinInviteTTL:
		return fmt.Errorf("invite TTL %v is too short: it must be at least %v", ttl, MinInviteTTL)
	case ttl > MaxInviteTTL:
		return fmt.Errorf("invite TTL %v is over the cap of %v (7 days): a long-lived invite is a standing credential", ttl, MaxInviteTTL)
	}
	return nil
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeErr(w, http.StatusRequestEntityTooLarge, err)
		return false
	}
	if len(body) == 0 {
		return true
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeErr answers with err's text unchanged. A lock error (ErrLocked,
// ErrUnescrowed) is 423 Locked whatever the handler chose, so every command
// that needs K can tell it apart and exit 3.
func writeErr(w http.ResponseWriter, status int, err error) {
	switch {
	case errors.Is(err, ErrUnescrowed):
		writeJSON(w, http.StatusLocked, apiError{Error: err.Error(), Code: codeUnescrowed})
	case errors.Is(err, ErrLocked):
		writeJSON(w, http.StatusLocked, apiError{Error: err.Error(), Code: codeLocked})
	default:
		writeJSON(w, status, apiError{Error: err.Error(), Code: generations.ErrorCode(err)})
	}
}

// Client talks to a running daemon's control API, or to its application
// key socket (see ServeApp), which answers Key only.
type Client struct {
	dataDir string // "" for a client of a named socket
	socket  string
	hc      *http.Client
}

// ErrDaemonNotRunning means no daemon answers on the data directory's socket.
var ErrDaemonNotRunning = errors.New("no p2pkey daemon is running on this data directory")

// NewClient returns a client for the daemon whose data directory is dataDir.
func NewClient(dataDir string) *Client {
	c := NewSocketClient(SocketPath(dataDir))
	c.dataDir = dataDir
	return c
}

// NewSocketClient returns a client for the daemon socket at path: a control
// socket, or an application key socket, which answers Key only (every other
// call gets an APIError with status 403).
func NewSocketClient(path string) *Client {
	return &Client{socket: path, hc: &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// unreachableError: nothing this user may reach answers on a named socket.
// It matches ErrDaemonNotRunning.
type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	why := e.err.Error()
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		why = errno.Error()
	}
	return fmt.Sprintf("cannot reach a p2pkey daemon on %s (%s)", e.socket, why)
}

func (e *unreachableError) Unwrap() []error { return []error{ErrDaemonNotRunning, e.err} }

// Socket is the path of the socket the client talks to.
func (c *Client) Socket() string { return c.socket }

// APIError is an error the daemon returned.
type APIError struct {
	Status  int
	Message string
	Code    string
}

func (e *APIError) Error() string { return e.Message }

// Unwrap lets errors.Is match the ledger sentinel the code names.
// A lock error matches ErrLocked, and an unescrowed one ErrUnescrowed too.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case codeLocked:
		return ErrLocked
	case codeUnescrowed:
		return ErrUnescrowed
	case codeForbidden:
		return ErrForbidden
	}
	return generations.ErrorByCode(e.Code)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://p2pkey/"+controlVersion+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		switch {
		case c.dataDir == "" && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrPermission)):
			return &unreachableError{socket: c.socket, err: err}
		case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%w (%s); start it with `p2pkey daemon`", ErrDaemonNotRunning, c.dataDir)
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ae apiError
		if json.Unmarshal(data, &ae) != nil || ae.Error == "" {
			ae.Error = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return &APIError{Status: resp.StatusCode, Message: ae.Error, Code: ae.Code}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/status", nil, &st)
	return st, err
}

// StatusJSON fetches the daemon's status as the JSON it sent, with any
// field this client's Status type does not know yet.
func (c *Client) StatusJSON(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.do(ctx, http.MethodGet, "/status", nil, &raw)
	return raw, err
}

// Members fetches the member table.
func (c *Client) Members(ctx context.Context) ([]MemberInfo, error) {
	var ms []MemberInfo
	err := c.do(ctx, http.MethodGet, "/members", nil, &ms)
	return ms, err
}

// Invite asks the daemon for an invite.
func (c *Client) Invite(ctx context.Context, ttl time.Duration) (InviteResponse, error) {
	var out InviteResponse
	in := map[string]string{}
	if ttl > 0 {
		in["ttl"] = ttl.String()
	}
	err := c.do(ctx, http.MethodPost, "/invite", in, &out)
	return out, err
}

// Remove records the daemon's vote to remove p (rule R2) and returns the
// votes so far: the first suspends p, a majority makes the removal final.
func (c *Client) Remove(ctx context.Context, p peer.ID) (VoteResult, error) {
	var out VoteResult
	err := c.do(ctx, http.MethodPost, "/remove", map[string]string{"peer_id": p.String()}, &out)
	return out, err
}

// Reinstate records the daemon's vote to lift p's suspension (rule R2).
func (c *Client) Reinstate(ctx context.Context, p peer.ID) (VoteResult, error) {
	var out VoteResult
	err := c.do(ctx, http.MethodPost, "/reinstate", map[string]string{"peer_id": p.String()}, &out)
	return out, err
}

// Leave makes the daemon leave the cluster.
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/leave", nil, nil)
}

// Key asks the daemon for the key derived for purpose. It returns an error
// wrapping ErrLocked while the node is locked (unless wait is set).
func (c *Client) Key(ctx context.Context, purpose string, wait bool) ([]byte, error) {
	var out KeyResponse
	err := c.do(ctx, http.MethodPost, "/key", KeyRequest{Purpose: purpose, Wait: wait}, &out)
	return out.Key, err
}

// RecoveryKit asks the daemon for a break-glass recovery kit encrypted to
// recipients. It fails with an error wrapping ErrLocked while the node is
// locked.
func (c *Client) RecoveryKit(ctx context.Context, recipients []string) (RecoveryKitResponse, error) {
	var out RecoveryKitResponse
	err := c.do(ctx, http.MethodPost, "/recovery-kit", RecoveryKitRequest{Recipients: recipients}, &out)
	return out, err
}

// Generations fetches every generation with its owner x holder matrix.
func (c *Client) Generations(ctx context.Context) ([]GenerationInfo, error) {
	var out []GenerationInfo
	err := c.do(ctx, http.MethodGet, "/generations", nil, &out)
	return out, err
}

// Audit asks the daemon to run a custody audit now.
func (c *Client) Audit(ctx context.Context) (AuditReport, error) {
	var out AuditReport
	err := c.do(ctx, http.MethodPost, "/audit", nil, &out)
	return out, err
}
