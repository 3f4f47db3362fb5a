package shares

import (
	"fmt"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/p2pkey/p2pkey/generations"
)

// Defaults of the service options.
const (
	// DefaultTimeout bounds one request and its response, on either side.
	DefaultTimeout = 10 * time.Second
	// DefaultFetchRate and DefaultFetchBurst are the per-peer token bucket
	// for fetches (rule S3).
	DefaultFetchRate  rate.Limit = 5
	DefaultFetchBurst int        = 10
)

// Tracer observes the service. Its methods are called synchronously from
// stream handlers and must not block. Nothing it is given holds share
// bytes.
type Tracer interface {
	// Refused reports a request the holder refused or could not read.
	// op is "push", "fetch" or "unknown"; err wraps a sentinel of this
	// package.
	Refused(op string, remote peer.ID, gen uint64, err error)
	// Served reports a request the holder answered with OK.
	Served(op string, remote peer.ID, gen uint64)
}

// SplitDecision decides a push for (gen, owner) that names another split
// than the envelope this holder already stores for (gen, owner): stored is
// the split of the stored envelope, pushed the split of the new one. It
// returns nil to replace the stored envelope with the pushed one (the old
// one is then deleted and erased from the disk before the receipt is sent),
// or an error to refuse the push. A refusal crosses the wire as
// ErrDuplicate, unless it wraps another of this package's wire sentinels;
// its text is sent to the owner, so it must not hold secrets.
//
// It is called from stream handlers (and from Push to this node itself),
// after the Policy allowed the push, and must not block for long.
type SplitDecision func(owner peer.ID, gen uint64, stored, pushed generations.SplitID) error

// RefuseNewSplit is the default SplitDecision: the first split stored for
// (generation, owner) stays, and a push of another split is refused with
// ErrDuplicate.
func RefuseNewSplit(owner peer.ID, gen uint64, stored, pushed generations.SplitID) error {
	return fmt.Errorf("%w: generation %d, owner %s: this holder keeps split %x, refuses split %x",
		ErrDuplicate, gen, owner, stored[:], pushed[:])
}

type config struct {
	timeout    time.Duration
	fetchRate  rate.Limit
	fetchBurst int
	log        *logging.ZapEventLogger
	tracer     Tracer
	splits     SplitDecision
	audit      *AuditLog
	observer   Observer
}

func defaultConfig() config {
	return config{
		timeout:    DefaultTimeout,
		fetchRate:  DefaultFetchRate,
		fetchBurst: DefaultFetchBurst,
		log:        logging.Logger("p2pkey/shares"),
		splits:     RefuseNewSplit,
	}
}

// Option configures NewService.
type Option func(*config) error

// WithTimeout sets the deadline of one exchange (default DefaultTimeout),
// both for the holder's handler and for Push and Fetch.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("shares: timeout %v must be positive", d)
		}
		c.timeout = d
		return nil
	}
}

// WithFetchRateLimit sets the per-peer token bucket for fetches: r tokens
// a second, up to burst (default 5/s, burst 10). rate.Inf disables it.
func WithFetchRateLimit(r rate.Limit, burst int) Option {
	return func(c *config) error {
		if r <= 0 || burst < 1 {
			return fmt.Errorf("shares: fetch rate %v burst %d: both must be positive", r, burst)
		}
		c.fetchRate, c.fetchBurst = r, burst
		return nil
	}
}

// WithLogger sets the logger (default logging.Logger("p2pkey/shares")).
func WithLogger(l *logging.ZapEventLogger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("shares: nil logger")
		}
		c.log = l
		return nil
	}
}

// WithSplitDecision sets how the holder decides a push whose split differs
// from the split it stores for the same (generation, owner). The default,
// RefuseNewSplit, refuses it. The node decides from the custody ledger, for
// example replacing a split of which the ledger recorded no receipt.
func WithSplitDecision(d SplitDecision) Option {
	return func(c *config) error {
		if d == nil {
			return fmt.Errorf("shares: nil split decision")
		}
		c.splits = d
		return nil
	}
}

// WithTracer sets a tracer of refusals and served requests.
func WithTracer(t Tracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}

// WithAuditLog records every envelope this holder stores, serves, refuses
// or deletes in a (see AuditLog). The service does not own a: close it
// after the service.
func WithAuditLog(a *AuditLog) Option {
	return func(c *config) error {
		if a == nil {
			return fmt.Errorf("shares: nil audit log")
		}
		c.audit = a
		return nil
	}
}

// WithObserver sets the observer the service reports its events and
// request latencies to, for metrics (see Observer).
func WithObserver(o Observer) Option {
	return func(c *config) error {
		if o == nil {
			return fmt.Errorf("shares: nil observer")
		}
		c.observer = o
		return nil
	}
}
