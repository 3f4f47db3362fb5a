package opsweb

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/shares"
	"github.com/prometheus/client_golang/prometheus"
)

// Observer is node.Observer: it receives the events only the node sees as
// they happen (envelopes a holder stores, serves, refuses or deletes, the
// owner's pushes and fetches, unlocks). *Server implements it; pass it as
// node.Config.Observer. Every method is cheap and safe to call from many
// goroutines. No argument carries key material: reasons are wire codes.
type Observer = node.Observer

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

// HolderEvent implements shares.Observer: fetches served and refused (by
// wire code) become counters.
func (s *Server) HolderEvent(e shares.Event) {
	switch e.Kind {
	case shares.EventServed:
		s.obs.served.Inc()
	case shares.EventRefused:
		if e.Op != "fetch" {
			return
		}
		reason := e.Reason
		if reason == "" {
			reason = "unknown"
		}
		s.obs.refused.WithLabelValues(reason).Inc()
	}
}

// OwnerRequest implements shares.Observer: pushes become the push latency
// histogram, by result.
func (s *Server) OwnerRequest(op string, _ peer.ID, took time.Duration, err error) {
	if op != "push" {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.obs.push.WithLabelValues(result).Observe(took.Seconds())
}

// Unlocked implements node.Observer.
func (s *Server) Unlocked(d time.Duration) { s.obs.unlock.Observe(d.Seconds()) }

var _ Observer = (*Server)(nil)
