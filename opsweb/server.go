package opsweb

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/p2pkey/p2pkey/node"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var log = logging.Logger("p2pkey/opsweb")

//go:embed static
var static embed.FS

// Paths the handler serves.
const (
	PathMetrics = "/metrics"
	PathStatus  = "/api/status"
)

// Server is the operator's handler: Prometheus metrics at /metrics, the
// status page at / and its JSON at /api/status. It is also the Observer the
// node reports its events to. Make one with New before the node starts (so
// the node can be given it as its observer), then Attach the node.
type Server struct {
	src     atomic.Pointer[Source]
	reg     *prometheus.Registry
	obs     *observerMetrics
	handler http.Handler
}

// Option configures New.
type Option func(*options)

type options struct {
	extra prometheus.Gatherer
}

// WithGatherer sets the other metrics /metrics serves after p2pkey's own:
// by default prometheus.DefaultGatherer, which holds the Go runtime and
// process collectors and, when the host was made with p2p.WithMetrics(true),
// go-libp2p's own metrics. Pass nil to serve p2pkey's metrics only.
func WithGatherer(g prometheus.Gatherer) Option {
	return func(o *options) { o.extra = g }
}

// New returns a Server with no node attached yet: until Attach, /metrics
// serves the Observer's counters and /api/status answers 503.
func New(opts ...Option) *Server {
	o := options{extra: prometheus.DefaultGatherer}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{reg: prometheus.NewRegistry()}
	s.obs = newObserverMetrics(s.reg)
	s.reg.MustRegister(collector{s: s})
	gatherers := prometheus.Gatherers{s.reg}
	if o.extra != nil {
		gatherers = append(gatherers, o.extra)
	}
	pageFS, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{ErrorLog: promLogger{}}))
	mux.HandleFunc("GET "+PathStatus, s.serveStatus)
	mux.Handle("GET /", noCache(http.FileServerFS(pageFS)))
	s.handler = mux
	return s
}

// Handler returns a Server with n attached, for callers that need no
// Observer.
func Handler(n *node.Node) http.Handler {
	s := New()
	s.Attach(n)
	return s
}

// Attach sets the node that metrics and the status page read. Attaching
// another (a node restarted in the same process) replaces it; attaching nil
// detaches it (do so before closing the node if the server outlives it).
func (s *Server) Attach(src Source) { s.src.Store(&src) }

func (s *Server) source() Source {
	if p := s.src.Load(); p != nil {
		return *p
	}
	return nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.handler.ServeHTTP(w, r)
}

// PageData is the JSON the status page polls at /api/status: the node's
// status and its generations, as `p2pkey status --json` and
// `p2pkey generations --json` print them, with the time they were read.
type PageData struct {
	Time        time.Time             `json:"time"`
	Status      node.Status           `json:"status"`
	Generations []node.GenerationInfo `json:"generations"`
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	src := s.source()
	if src == nil {
		http.Error(w, "the node is starting", http.StatusServiceUnavailable)
		return
	}
	d := PageData{Time: time.Now().UTC(), Status: src.Status(), Generations: src.Generations()}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(d); err != nil {
		log.Debugw("status page client went away", "err", err)
	}
}

// noCache serves the page's files with headers that keep a browser from
// caching a stale page across an upgrade, and from running anything but
// the page's own script.
func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

type promLogger struct{}

func (promLogger) Println(v ...any) { log.Warn(v...) }

// Start listens on addr (host:port; use a loopback address unless the
// network is trusted: the page names peers and addresses) and serves h until
// ctx is done. It returns once the listener is open, so a port in use is an
// error here, not later; it returns the address it listens on.
func Start(ctx context.Context, addr string, h http.Handler) (net.Addr, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Errorw("metrics and status listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	log.Infow("serving metrics and the status page", "addr", ln.Addr().String())
	return ln.Addr(), nil
}
