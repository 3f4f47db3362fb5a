package shares

import (
	"fmt"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
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

type config struct {
	timeout    time.Duration
	fetchRate  rate.Limit
	fetchBurst int
	log        *logging.ZapEventLogger
	tracer     Tracer
}

func defaultConfig() config {
	return config{
		timeout:    DefaultTimeout,
		fetchRate:  DefaultFetchRate,
		fetchBurst: DefaultFetchBurst,
		log:        logging.Logger("p2pkey/shares"),
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

// WithTracer sets a tracer of refusals and served requests.
func WithTracer(t Tracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}
