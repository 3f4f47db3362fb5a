package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"strings"
	"time"
)

// The application key socket lets local programs that do not run as the
// daemon's user have keys: the same HTTP API as the control socket, but it
// answers POST /v1/key only (what `p2pkey key`, `encrypt` and `decrypt`
// need), and only for the purposes the rules grant the peer's uid or
// groups. Everything else (invite, remove, reinstate, leave, status, the
// recovery kit) is refused with 403: those stay on the control socket,
// which only the daemon's user reaches (rule S5).

// ErrForbidden: the socket does not allow this request to this peer.
var ErrForbidden = errors.New("forbidden")

const codeForbidden = "forbidden"

// AppRule grants one uid, or the members of one group, keys for some
// purposes on the application key socket.
type AppRule struct {
	// Group: ID is a gid, matched against the peer's primary and
	// supplementary groups; otherwise ID is a uid.
	Group bool
	ID    uint32
	// Purposes are exact purpose names, or prefixes ending in "*": "app/*"
	// grants "app/db" and "app/a/b"; "*" grants every purpose.
	Purposes []string
}

// ParseAppRule parses a rule of the form KIND:ID=PURPOSE[,PURPOSE...],
// where KIND is uid, gid, user or group (user and group take a name, looked
// up now), for example "uid:1000=app/*" or "group:web=web/*,cache".
func ParseAppRule(s string) (AppRule, error) {
	var r AppRule
	who, purposes, ok := strings.Cut(s, "=")
	kind, id, ok2 := strings.Cut(who, ":")
	if !ok || !ok2 || id == "" {
		return r, fmt.Errorf("app rule %q: want KIND:ID=PURPOSE[,PURPOSE...], KIND one of uid, gid, user, group", s)
	}
	var num string
	switch kind {
	case "uid", "gid":
		num = id
	case "user":
		u, err := user.Lookup(id)
		if err != nil {
			return r, fmt.Errorf("app rule %q: %w", s, err)
		}
		num = u.Uid
	case "group":
		g, err := user.LookupGroup(id)
		if err != nil {
			return r, fmt.Errorf("app rule %q: %w", s, err)
		}
		num = g.Gid
	default:
		return r, fmt.Errorf("app rule %q: kind %q: want uid, gid, user or group", s, kind)
	}
	v, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return r, fmt.Errorf("app rule %q: %q is not a numeric id", s, num)
	}
	r.ID, r.Group = uint32(v), kind == "gid" || kind == "group"
	for _, p := range strings.Split(purposes, ",") {
		p = strings.TrimSpace(p)
		if p == "" || strings.Contains(strings.TrimSuffix(p, "*"), "*") {
			return r, fmt.Errorf("app rule %q: purpose pattern %q: want a name, or a prefix ending in *", s, p)
		}
		r.Purposes = append(r.Purposes, p)
	}
	return r, nil
}

// String gives the rule back in ParseAppRule's numeric form.
func (r AppRule) String() string {
	kind := "uid"
	if r.Group {
		kind = "gid"
	}
	return fmt.Sprintf("%s:%d=%s", kind, r.ID, strings.Join(r.Purposes, ","))
}

func (r AppRule) matches(c peerCred) bool {
	if !c.known {
		return false
	}
	if r.Group {
		return c.inGroup(r.ID)
	}
	return c.UID == r.ID
}

func (r AppRule) allows(purpose string) bool {
	for _, p := range r.Purposes {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(purpose, prefix) || p == purpose {
			return true
		}
	}
	return false
}

// appGrant says whether rules let cred have the key for purpose, and if not,
// why, in words for the peer.
func appGrant(rules []AppRule, cred peerCred, purpose string) error {
	var granted []string
	for _, r := range rules {
		if !r.matches(cred) {
			continue
		}
		if r.allows(purpose) {
			return nil
		}
		granted = append(granted, r.Purposes...)
	}
	if len(granted) == 0 {
		return fmt.Errorf("%w: uid %d has no rule on this socket (the daemon's --app-allow)", ErrForbidden, cred.UID)
	}
	return fmt.Errorf("%w: uid %d may not have the key for purpose %q on this socket (it may have: %s)", ErrForbidden, cred.UID, purpose, strings.Join(granted, ", "))
}

// AppConfig configures the application key socket.
type AppConfig struct {
	// Path is the socket, for example /run/p2pkey/app.sock. Its directory
	// must let the applications' users in.
	Path string
	// Group, a group name or number, owns the socket file, which is then
	// 0660; when empty the file is 0666. Either way Allow decides.
	Group string
	// Allow lists who may have which keys. At least one rule is required.
	Allow []AppRule
}

type credKey struct{}

type credResult struct {
	cred peerCred
	err  error
}

// ServeApp serves the application key socket until the node closes or the
// returned server is closed.
func (n *Node) ServeApp(cfg AppConfig) (*SocketServer, error) {
	if len(cfg.Allow) == 0 {
		return nil, errors.New("application key socket: no rule allows anyone a key (give at least one, e.g. uid:1000=app/*)")
	}
	mode, gid := fs.FileMode(0o666), -1
	if cfg.Group != "" {
		g, err := lookupGroup(cfg.Group)
		if err != nil {
			return nil, fmt.Errorf("application key socket: group %q: %w", cfg.Group, err)
		}
		mode, gid = 0o660, g
	}
	s, err := n.listenKeySocket("application key socket", cfg.Path, mode, gid)
	if err != nil {
		return nil, err
	}
	rules := append([]AppRule(nil), cfg.Allow...)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		cr, _ := r.Context().Value(credKey{}).(credResult)
		if cr.err != nil || !cr.cred.known {
			writeJSON(w, http.StatusForbidden, apiError{Error: "forbidden: the peer's credentials cannot be read", Code: codeForbidden})
			return
		}
		var req KeyRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := appGrant(rules, cr.cred, req.Purpose); err != nil {
			log.Warnw("application key socket: refused", "uid", cr.cred.UID, "pid", cr.cred.PID, "purpose", req.Purpose)
			writeJSON(w, http.StatusForbidden, apiError{Error: err.Error(), Code: codeForbidden})
			return
		}
		k, err := n.Key(r.Context(), req.Purpose, req.Wait)
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		defer clear(k)
		log.Debugw("application key served", "uid", cr.cred.UID, "pid", cr.cred.PID, "purpose", req.Purpose)
		writeJSON(w, http.StatusOK, KeyResponse{Purpose: req.Purpose, Key: k})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		what := strings.TrimPrefix(r.URL.Path, "/"+controlVersion+"/")
		writeJSON(w, http.StatusForbidden, apiError{
			Error: fmt.Sprintf("forbidden: the application key socket serves keys only (key, encrypt, decrypt); %q needs the control socket in the data directory, which only the daemon's user can reach", what),
			Code:  codeForbidden,
		})
	})
	srv := &http.Server{
		Handler:           http.MaxBytesHandler(mux, maxControlBody),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			uc, ok := c.(*net.UnixConn)
			if !ok {
				return context.WithValue(ctx, credKey{}, credResult{err: errors.New("not a unix connection")})
			}
			cred, err := peerCredOf(uc)
			return context.WithValue(ctx, credKey{}, credResult{cred: cred, err: err})
		},
	}
	s.onClose = func() { srv.Close() }
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv.Serve(s.ln)
	}()
	var ruleText []string
	for _, r := range rules {
		ruleText = append(ruleText, r.String())
	}
	log.Infow("application key socket listening", "socket", s.path, "rules", strings.Join(ruleText, " "))
	return s, nil
}

// lookupGroup resolves a group name or number to a gid.
func lookupGroup(s string) (int, error) {
	if v, err := strconv.ParseUint(s, 10, 32); err == nil {
		return int(v), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(g.Gid, 10, 32)
	return int(v), err
}
