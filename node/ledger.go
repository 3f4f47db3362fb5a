package node

import (
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
)

// ledgerSM adapts the custody ledger to consensus.StateMachine. It is the
// whole FSM bridge: decoding and every rule live in package generations.
type ledgerSM struct {
	l *generations.Ledger
}

func (s *ledgerSM) Apply(cmd []byte) ([]byte, error) {
	_, err := s.l.Apply(cmd)
	return nil, err
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
