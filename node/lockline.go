package node

import (
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// LockSummary is the node's lock state in one line, for a service manager's
// status (systemd's STATUS=) or a log:
//
//	unlocked (generation 4: 3 shares held, threshold 2)
//	locked: 1 of 2 shares for generation 4, waiting on 12D3KooW…x7Qd2a
//	unescrowed: a cluster of one cannot protect K: invite a second node
//
// "waiting on" names the holders of the generation the node unlocks with
// that it is not connected to.
func (n *Node) LockSummary() string {
	state, p := n.LockState()
	switch state {
	case LockUnlocked:
		if p.Need > 0 {
			return fmt.Sprintf("unlocked (generation %d: %d shares held, threshold %d)", p.Generation, p.Have, p.Need)
		}
		return "unlocked"
	case LockUnescrowed:
		reason := strings.TrimPrefix(p.Reason, "locked: ")
		if reason == "" {
			reason = "not yet escrowed in a committed generation"
		}
		return "unescrowed: " + reason
	}
	line := p.Reason
	if p.Need > 0 && (p.Reason == "" || strings.Contains(p.Reason, "shares gathered")) {
		line = fmt.Sprintf("locked: %d of %d shares for generation %d", p.Have, p.Need, p.Generation)
	}
	if line == "" {
		line = "locked"
	}
	if !strings.HasPrefix(line, "locked") {
		line = "locked: " + line
	}
	if n.isRemoved() {
		return line
	}
	if away := n.unreachableHolders(); len(away) > 0 {
		names := make([]string, 0, 3)
		for i, id := range away {
			if i == 3 {
				names = append(names, fmt.Sprintf("%d more", len(away)-3))
				break
			}
			names = append(names, lockShortID(id))
		}
		line += ", waiting on " + strings.Join(names, ", ")
	}
	return line
}

// unreachableHolders lists the holders of the generation this node unlocks
// with (from the ledger, else the unlock hint) that it has no connection to.
func (n *Node) unreachableHolders() []peer.ID {
	self := n.host.ID()
	var holders []peer.ID
	n.view(func(l *generations.Ledger) { holders = l.Coverage(self).Holders })
	if len(holders) == 0 {
		if h, ok := n.loadUnlockHint(); ok {
			holders = h.coverage().Holders
		}
	}
	var away []peer.ID
	for _, id := range holders {
		if id != self && n.host.Network().Connectedness(id) != network.Connected {
			away = append(away, id)
		}
	}
	return away
}

// lockShortID abbreviates a peer ID as 12D3KooW…x7Qd2a.
func lockShortID(id peer.ID) string {
	s := id.String()
	if len(s) <= 16 {
		return s
	}
	return s[:8] + "…" + s[len(s)-6:]
}
