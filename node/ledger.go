package node

import (
	"encoding/json"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
)

// ledgerSM adapts the custody ledger to consensus.StateMachine. It is the
// whole FSM bridge: decoding and every rule live in package generations.
type ledgerSM struct {
	l *generations.Ledger
}

func (s *ledgerSM) Apply(now int64, cmd []byte) ([]byte, error) {
	res, err := s.l.Apply(now, cmd)
	var out []byte
	if err == nil && res.Opened != 0 {
		// A proposer learns the generation it opened from the leader's
		// answer, before its own ledger has applied the entry.
		if g, ok := s.l.Generation(res.Opened); ok {
			out = encodeOpened(g)
		}
	}
	return out, err
}

// openedResult is the state-machine result of a command that opened a
// generation.
type openedResult struct {
	Generation uint64    `json:"generation"`
	Members    []peer.ID `json:"-"`
	Threshold  int       `json:"threshold"`
	RawMembers [][]byte  `json:"members"`
}

func encodeOpened(g generations.Generation) []byte {
	r := openedResult{Generation: g.Number, Threshold: g.Threshold}
	for _, m := range g.Members {
		r.RawMembers = append(r.RawMembers, []byte(m))
	}
	b, _ := json.Marshal(r)
	return b
}

// decodeOpened reads an openedResult; ok is false for any other result.
func decodeOpened(b []byte) (openedResult, bool) {
	var r openedResult
	if len(b) == 0 || json.Unmarshal(b, &r) != nil || r.Generation == 0 {
		return openedResult{}, false
	}
	for _, m := range r.RawMembers {
		r.Members = append(r.Members, peer.ID(m))
	}
	return r, true
}
func (s *ledgerSM) Snapshot() ([]byte, error) { return s.l.Snapshot() }

func (s *ledgerSM) Restore(data []byte) error {
	l := generations.New()
	if err := l.Restore(data); err != nil {
		return err
	}
	s.l = l
	return nil
}

// errorCodec carries the ledger's sentinel errors across forwarding.
type errorCodec struct{}

func (errorCodec) Code(err error) string   { return generations.ErrorCode(err) }
func (errorCodec) Error(code string) error { return generations.ErrorByCode(code) }

var _ consensus.ErrorCodec = errorCodec{}
