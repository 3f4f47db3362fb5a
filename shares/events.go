package shares

import (
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
)

// Observer is told what the service does, for metrics. Its methods are
// called synchronously (from stream handlers, Push, Fetch and the store's
// deletes) and must be fast and must not block. Nothing it is given holds
// share bytes.
type Observer interface {
	// HolderEvent reports what this node, as a holder, did with an
	// envelope, its own included: the same events the audit log records.
	HolderEvent(Event)
	// OwnerRequest reports one Push or Fetch this node made as an owner
	// (to itself too): op is "push" or "fetch", took is its duration,
	// and err is nil on success (Reason(err) gives a label).
	OwnerRequest(op string, holder peer.ID, took time.Duration, err error)
}

// Reason is a stable label for the outcome of a Push or Fetch: "OK" for
// nil, the wire code's name (for example "NOT_FOUND") for an error that
// wraps one of this package's wire sentinels, and "OTHER" for anything
// else (the holder could not be reached, it timed out, it answered
// nonsense).
func Reason(err error) string {
	if err == nil {
		return "OK"
	}
	if c := codeOf(err); c.String() != "INTERNAL" || errors.Is(err, ErrInternal) {
		return c.String()
	}
	return "OTHER"
}

// RefusalKey names a count of refusals in Stats: the operation ("push",
// "fetch" or "unknown") and the refusal's wire code.
type RefusalKey struct {
	Op     string
	Reason string
}

// Stats are the holder's counts since the service started.
type Stats struct {
	// Stored counts pushes stored (EventStored).
	Stored uint64
	// Served counts fetches answered with the envelope (EventServed).
	Served uint64
	// Refused counts refusals by operation and reason (EventRefused).
	Refused map[RefusalKey]uint64
	// Deleted counts envelopes deleted from the store, by reason
	// (EventDeleted; a Deleted* constant).
	Deleted map[string]uint64
}

// stats is what Stats copies.
type stats struct {
	mu      sync.Mutex
	stored  uint64
	served  uint64
	refused map[RefusalKey]uint64
	deleted map[string]uint64
}

func (st *stats) add(e Event) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch e.Kind {
	case EventStored:
		st.stored++
	case EventServed:
		st.served++
	case EventRefused:
		if st.refused == nil {
			st.refused = map[RefusalKey]uint64{}
		}
		st.refused[RefusalKey{Op: e.Op, Reason: e.Reason}]++
	case EventDeleted:
		if st.deleted == nil {
			st.deleted = map[string]uint64{}
		}
		st.deleted[e.Reason]++
	}
}

// Stats returns a snapshot of the holder's counts since NewService.
func (s *Service) Stats() Stats {
	st := &s.stats
	st.mu.Lock()
	defer st.mu.Unlock()
	out := Stats{Stored: st.stored, Served: st.served,
		Refused: make(map[RefusalKey]uint64, len(st.refused)),
		Deleted: make(map[string]uint64, len(st.deleted))}
	for k, v := range st.refused {
		out.Refused[k] = v
	}
	for k, v := range st.deleted {
		out.Deleted[k] = v
	}
	return out
}

// record logs e at INFO, counts it, appends it to the audit log and tells
// the observer. extra are more log fields (never secrets).
func (s *Service) record(e Event, extra ...any) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	fields := []any{"owner", e.Owner, "holder", e.Holder, "generation", e.Generation}
	if e.Op != "" {
		fields = append(fields, "op", e.Op)
	}
	if e.Split != (generations.SplitID{}) {
		fields = append(fields, "split", hex.EncodeToString(e.Split[:]))
	}
	if e.Reason != "" {
		fields = append(fields, "reason", e.Reason)
	}
	s.log.Infow(eventMessage[e.Kind], append(fields, extra...)...)
	s.stats.add(e)
	if a := s.cfg.audit; a != nil {
		if err := a.Append(e); err != nil {
			if !s.auditFailed.Swap(true) {
				s.log.Errorw("audit log append failed; share events are not being recorded", "path", a.Path(), "err", err)
			}
		} else if s.auditFailed.Swap(false) {
			s.log.Infow("audit log append works again", "path", a.Path())
		}
	}
	if s.cfg.observer != nil {
		s.cfg.observer.HolderEvent(e)
	}
}

// eventMessage is the log message of each event.
var eventMessage = map[EventKind]string{
	EventStored:  "share envelope stored",
	EventServed:  "share envelope served",
	EventRefused: "share request refused",
	EventDeleted: "share envelope deleted",
}

// observeRequest tells the observer of a Push or Fetch.
func (s *Service) observeRequest(op string, holder peer.ID, start time.Time, err error) {
	if s.cfg.observer != nil {
		s.cfg.observer.OwnerRequest(op, holder, time.Since(start), err)
	}
}
