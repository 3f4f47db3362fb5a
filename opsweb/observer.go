package opsweb

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Observer receives the events that only the node sees as they happen:
// envelopes a holder serves or refuses, pushes of envelopes to holders, and
// unlocks. Its methods take only built-in types, time.Duration and error, so
// node can declare the same method set as its own interface (node must not
// import this package) and *Server satisfies it. Every method must be cheap
// and safe to call from many goroutines; none blocks.
//
// No argument may carry key material: reasons are short fixed tokens.
type Observer interface {
	// FetchServed counts an envelope this node, as a holder, released to
	// its owner.
	FetchServed()
	// FetchRefused counts a fetch this node refused; reason is one of a
	// small fixed set of tokens (for example "not-member", "suspended",
	// "wrong-owner", "no-envelope", "rate-limited"), as it becomes a label.
	FetchRefused(reason string)
	// PushDone records how long pushing one envelope to one holder took,
	// and whether it failed (err != nil).
	PushDone(d time.Duration, err error)
	// Unlocked records how long this node took to gather its threshold of
	// shares and rebuild its key, from the moment it started gathering.
	Unlocked(d time.Duration)
}

// The counters and histograms behind Observer. docs/METRICS.md documents
// each.
type observerMetrics struct {
	served  prometheus.Counter
	refused *prometheus.CounterVec
	push    *prometheus.HistogramVec
	unlock  prometheus.Histogram
}

func newObserverMetrics(reg prometheus.Registerer) *observerMetrics {
	m := &observerMetrics{
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "share_fetches_served_total",
			Help: "Envelopes this node, as a holder, released to their owner.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "share_fetches_refused_total",
			Help: "Envelope fetches this node refused, by reason.",
		}, []string{"reason"}),
		push: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "share_push_duration_seconds",
			Help:    "Time to push one envelope to one holder, by result (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1 ms .. 65 s
		}, []string{"result"}),
		unlock: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "unlock_duration_seconds",
			Help:    "Time from starting to gather shares to holding the rebuilt key.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 9), // 10 ms .. 11 min
		}),
	}
	reg.MustRegister(m.served, m.refused, m.push, m.unlock)
	return m
}

// FetchServed implements Observer.
func (s *Server) FetchServed() { s.obs.served.Inc() }

// FetchRefused implements Observer.
func (s *Server) FetchRefused(reason string) {
	if reason == "" {
		reason = "unknown"
	}
	s.obs.refused.WithLabelValues(reason).Inc()
}

// PushDone implements Observer.
func (s *Server) PushDone(d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.obs.push.WithLabelValues(result).Observe(d.Seconds())
}

// Unlocked implements Observer.
func (s *Server) Unlocked(d time.Duration) { s.obs.unlock.Observe(d.Seconds()) }

var _ Observer = (*Server)(nil)
