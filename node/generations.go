package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// GenerationInfo is one generation as `p2pkey generations` shows it.
type GenerationInfo struct {
	Number      uint64     `json:"number"`
	State       string     `json:"state"`
	Current     bool       `json:"current"`
	Members     []string   `json:"members"`
	Threshold   int        `json:"threshold"`
	Joiners     []string   `json:"joiners,omitempty"`
	Removals    []string   `json:"removals,omitempty"`
	OpenedAt    time.Time  `json:"opened_at"`
	Deadline    *time.Time `json:"deadline,omitempty"`
	CommittedAt *time.Time `json:"committed_at,omitempty"`
	Escrowed    int        `json:"owners_escrowed"`
	// Matrix[i][j] is true when Members[j] holds a recorded envelope of
	// owner Members[i].
	Matrix [][]bool `json:"matrix,omitempty"`
	// Held[i] is how many shares of owner Members[i] are held.
	Held []int `json:"shares_held,omitempty"`
}

// Generations lists every generation the ledger knows, oldest first, with
// the owner x holder matrix of those still live.
func (n *Node) Generations() []GenerationInfo {
	out := []GenerationInfo{}
	n.view(func(l *generations.Ledger) {
		cur, hasCur := l.Current()
		for _, g := range l.Generations() {
			gi := GenerationInfo{
				Number: g.Number, State: g.State.String(), Current: hasCur && g.Number == cur.Number,
				Members: ids(g.Members), Threshold: g.Threshold, Joiners: ids(g.Joiners), Removals: ids(g.Removals),
				OpenedAt: g.OpenedAt, Escrowed: g.Escrowed,
			}
			if !g.Deadline.IsZero() && g.State == generations.StateOpen {
				d := g.Deadline
				gi.Deadline = &d
			}
			if !g.CommittedAt.IsZero() {
				c := g.CommittedAt
				gi.CommittedAt = &c
			}
			if m, ok := l.Matrix(g.Number); ok {
				gi.Matrix, gi.Held = m.Held, m.Count
			}
			out = append(out, gi)
		}
	})
	return out
}

func ids(ps []peer.ID) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
