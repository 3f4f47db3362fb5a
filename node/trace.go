package node

import "fmt"

// trace tells the test hook, if one is set, a step of this node's unlock or
// of a fetch it serves: BenchmarkUnlock -unlock.trace prints them for its
// slowest restarts, to say what those waited on. Without the hook it costs a
// nil check.
func (n *Node) trace(format string, args ...any) {
	if h := n.cfg.hooks; h != nil && h.trace != nil {
		h.trace(n.host.ID(), fmt.Sprintf(format, args...))
	}
}
