package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

type globals struct {
	dataDir string
	jsonOut bool
	// socket, from --socket or $P2PKEY_SOCKET, replaces the data
	// directory's control socket.
	socket string
}

// defaultAppSocket is where the packaged unit serves the application key
// socket; key, encrypt and decrypt use it when the user cannot reach the
// data directory's control socket.
const defaultAppSocket = "/run/p2pkey/app.sock"

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "p2pkey",
		Short: "Keep each machine's key alive on its cluster, never on its own disk",
		Long: `p2pkey runs a peer-to-peer node that holds its cluster's key shares.

Every node has a 32-byte key (K) that protects its own data. The node splits K
with Shamir's Secret Sharing and hands sealed shares to its peers; a Raft log
replicated over libp2p records who holds what. A restarted node is locked until
it has fetched a threshold of its shares back from its peers.

The data directory comes from --data, otherwise $P2PKEY_DATA, otherwise
~/.p2pkey. Commands other than init and daemon talk to the running daemon over
the unix socket DATA/p2pkey.sock.

Exit status: 0 success, 1 error, 2 usage error, 3 the node is locked.`,
		Example: `  p2pkey init
  p2pkey daemon --bootstrap              # first node of a new cluster
  p2pkey invite --ttl 30m > invite.txt   # on a member: print an invite
  p2pkey daemon --join-file invite.txt   # on the new machine
  p2pkey status`,
		SilenceUsage:               true,
		SilenceErrors:              true,
		Version:                    readVersion().String(),
		SuggestionsMinimumDistance: 2,
		// Runnable, so that an unknown command reaches Args and exits 2.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "\nDid you mean " + strings.Join(s, " or ") + "?"
			}
			return &statusError{code: exitUsage, err: fmt.Errorf("%s\nRun '%s --help' for usage", msg, cmd.CommandPath())}
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().StringVar(&g.dataDir, "data", "", "data directory (default $P2PKEY_DATA, else ~/.p2pkey)")
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "talk to the daemon on this socket instead of DATA/p2pkey.sock, e.g. the application key socket (default $P2PKEY_SOCKET)")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if g.socket == "" {
			g.socket = os.Getenv("P2PKEY_SOCKET")
		}
		if g.dataDir == "" {
			g.dataDir = os.Getenv("P2PKEY_DATA")
		}
		if g.dataDir == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("cannot find a home directory; pass --data: %w", err)
			}
			g.dataDir = filepath.Join(home, ".p2pkey")
		}
		abs, err := filepath.Abs(g.dataDir)
		if err != nil {
			return err
		}
		g.dataDir = abs
		return nil
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &statusError{code: exitUsage, err: fmt.Errorf("%w\nRun '%s --help' for usage", err, cmd.CommandPath())}
	})
	root.AddCommand(
		newInitCmd(g),
		newDaemonCmd(g),
		newInviteCmd(g),
		newStatusCmd(g),
		newMembersCmd(g),
		newRemoveCmd(g),
		newReinstateCmd(g),
		newLeaveCmd(g),
		newWaitCmd(g),
		newKeyCmd(g),
		newEncryptCmd(g),
		newDecryptCmd(g),
		newGenerationsCmd(g),
		newAuditCmd(g),
		newAuditLogCmd(g),
		newRecoveryKitCmd(g),
		newRecoverCmd(g),
		newVersionCmd(g),
	)
	return root
}

func usageArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &statusError{code: exitUsage, err: fmt.Errorf("%s takes %d argument(s), got %d\nRun '%s --help' for usage", cmd.CommandPath(), n, len(args), cmd.CommandPath())}
		}
		return nil
	}
}

// client talks to the control socket, or to the one --socket names.
func (g *globals) client() *node.Client {
	if g.socket != "" {
		return node.NewSocketClient(g.socket)
	}
	return node.NewClient(g.dataDir)
}

// keyClient is client for the commands that only need keys (key, encrypt,
// decrypt): when no socket is named and this user cannot reach the data
// directory's control socket, it uses the application key socket at
// defaultAppSocket if there is one.
func (g *globals) keyClient() *node.Client {
	if g.socket == "" {
		if _, err := os.Stat(node.SocketPath(g.dataDir)); err != nil {
			if fi, err := os.Stat(defaultAppSocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
				return node.NewSocketClient(defaultAppSocket)
			}
		}
	}
	return g.client()
}

func reqCtx(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), d)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
