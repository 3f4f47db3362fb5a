package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
	srv *http.Server
	ln  net.Listener
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

const codeLocked = "locked"

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
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Status())
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
			if err != nil || d <= 0 {
				writeErr(w, http.StatusBadRequest, fmt.Errorf("ttl %q: want a positive duration such as 30m or 24h", req.TTL))
				return
			}
			ttl = d
		}
		tok, err := n.Invite(r.Context(), ttl)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		inv, _ := DecodeInvite(tok)
		writeJSON(w, http.StatusOK, InviteResponse{Invite: tok, ExpiresAt: inv.ExpiresAt})
	})
	mux.HandleFunc("POST /v1/remove", func(w http.ResponseWriter, r *http.Request) {
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
		if _, err := n.Remove(r.Context(), id); err != nil {
			status := http.StatusConflict
			if errors.Is(err, ErrUnknownMember) {
				status = http.StatusNotFound
			}
			writeErr(w, status, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"removed": id.String()})
	})
	mux.HandleFunc("POST /v1/leave", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Leave(r.Context()); err != nil {
			writeErr(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"left": n.host.ID().String()})
		n.events.publish(Event{Type: EventMemberRemoved, Peer: n.host.ID(), Detail: "left"})
	})
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		var req KeyRequest
		if !readJSON(w, r, &req) {
			return
		}
		k, err := n.Key(r.Context(), req.Purpose, req.Wait)
		switch {
		case errors.Is(err, ErrLocked):
			writeJSON(w, http.StatusLocked, apiError{Error: err.Error(), Code: codeLocked})
			return
		case err != nil:
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
	return &controlServer{srv: srv, ln: ln}, nil
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

func writeErr(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, apiError{Error: err.Error(), Code: generations.ErrorCode(err)})
}

// Client talks to a running daemon's control API.
type Client struct {
	dataDir string
	hc      *http.Client
}

// ErrDaemonNotRunning means no daemon answers on the data directory's socket.
var ErrDaemonNotRunning = errors.New("no p2pkey daemon is running on this data directory")

// NewClient returns a client for the daemon whose data directory is dataDir.
func NewClient(dataDir string) *Client {
	path := SocketPath(dataDir)
	return &Client{dataDir: dataDir, hc: &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// APIError is an error the daemon returned.
type APIError struct {
	Status  int
	Message string
	Code    string
}

func (e *APIError) Error() string { return e.Message }

// Unwrap lets errors.Is match the ledger sentinel the code names.
func (e *APIError) Unwrap() error {
	if e.Code == codeLocked {
		return ErrLocked
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
		body = bytesReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://p2pkey/"+controlVersion+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || isConnRefused(err) {
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

// Members fetches the member table.
func (c *Client) Members(ctx context.Context) ([]MemberStatus, error) {
	var ms []MemberStatus
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

// Remove revokes a member.
func (c *Client) Remove(ctx context.Context, p peer.ID) error {
	return c.do(ctx, http.MethodPost, "/remove", map[string]string{"peer_id": p.String()}, nil)
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
