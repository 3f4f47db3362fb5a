package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// kitWarning is printed whenever a kit is made.
const kitWarning = "whoever holds this kit and one of its identities holds this node's key, whatever the cluster decides " +
	"(a removal included): keep it offline, apart from the identity"

func newRecoveryKitCmd(g *globals) *cobra.Command {
	var recipients []string
	var out string
	cmd := &cobra.Command{
		Use:   "recovery-kit --recipient AGE_RECIPIENT... [--out FILE]",
		Short: "Write a break-glass recovery kit: this node's key, encrypted to you",
		Long: `recovery-kit asks the daemon for a break-glass recovery kit: this node's key K,
with the cluster ID, the peer ID and the generation it is escrowed in, encrypted
with age to the recipients you name (an age recipient, age1..., from
age-keygen, or an SSH public key). The daemon encrypts it in memory: K never
crosses the control socket in plaintext and never reaches the node's disk. The
kit is written to stdout, or to --out FILE (created 0600, never overwritten).

With the kit and an identity, 'p2pkey recover' derives every key this node
would, and decrypts what 'p2pkey encrypt' made, with no daemon and no network:
for the day the cluster is gone.

This is a trade. A kit is K: whoever holds it and one of its identities holds
this node's key, whatever the cluster decides, a removal included. Keep it
offline and apart from the identity. 'status' shows whether a kit was made for
the current key. The node must be unlocked (exit 3 otherwise).`,
		Example: `  age-keygen -o ops.key        # keep ops.key offline, e.g. on paper or a token
  p2pkey recovery-kit --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p --out node1.kit
  p2pkey recovery-kit --recipient "$(cat ~/.ssh/id_ed25519.pub)" > node1.kit`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(recipients) == 0 {
				return &statusError{code: exitUsage, err: errors.New("--recipient is required: an age recipient (age1...) or an SSH public key")}
			}
			for _, r := range recipients {
				if _, err := node.ParseRecoveryRecipient(r); err != nil {
					return &statusError{code: exitUsage, err: err}
				}
			}
			var f *os.File
			if out != "" {
				var err error
				if f, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			}
			ctx, cancel := reqCtx(cmd, 30*time.Second)
			defer cancel()
			c := g.client()
			res, err := c.RecoveryKit(ctx, recipients)
			if err != nil {
				if f != nil {
					f.Close()
					os.Remove(out)
				}
				return explain(c, err, "make a recovery kit", 30*time.Second, true)
			}
			w := cmd.OutOrStdout()
			if f != nil {
				w = f
			}
			if _, err := io.WriteString(w, res.Kit); err != nil {
				return err
			}
			if f != nil {
				if err := f.Close(); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "p2pkey: recovery kit for %s in cluster %s (generation %d), encrypted to %d recipient(s)\np2pkey: %s\n",
				res.Info.PeerID, res.Info.ClusterID, res.Info.Generation, len(res.Info.Recipients), kitWarning)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&recipients, "recipient", nil, "age recipient (age1...) or SSH public key to encrypt the kit to (repeatable)")
	cmd.Flags().StringVar(&out, "out", "", "write the kit to this new file (mode 0600) instead of stdout")
	return cmd
}

// recoverFlags are recover's --kit and --identity.
type recoverFlags struct {
	kit, identity string
}

// open reads and opens the kit. The caller wipes it.
func (f *recoverFlags) open() (*node.RecoveryKit, error) {
	if f.kit == "" || f.identity == "" {
		return nil, &statusError{code: exitUsage, err: errors.New("recover needs --kit FILE and --identity FILE")}
	}
	idData, err := os.ReadFile(f.identity)
	if err != nil {
		return nil, fmt.Errorf("--identity: %w", err)
	}
	defer clear(idData)
	ids, err := node.ParseRecoveryIdentities(idData)
	if err != nil {
		return nil, fmt.Errorf("--identity %s: %w", f.identity, err)
	}
	kf, err := os.Open(f.kit)
	if err != nil {
		return nil, fmt.Errorf("--kit: %w", err)
	}
	defer kf.Close()
	kit, err := node.OpenRecoveryKit(kf, ids...)
	if err != nil {
		return nil, fmt.Errorf("--kit %s: %w", f.kit, err)
	}
	return kit, nil
}

func newRecoverCmd(g *globals) *cobra.Command {
	f := &recoverFlags{}
	cmd := &cobra.Command{
		Use:   "recover --kit FILE --identity FILE key|decrypt|encrypt|show ...",
		Short: "Use a recovery kit: keys and decryption with no daemon and no network",
		Long: `recover opens a recovery kit made by 'p2pkey recovery-kit' with an age identity
file (age-keygen's output) or an unencrypted SSH private key, checks the key it
holds against the key-check value it carries, and then does what the node
would, with no daemon and no network:

  key       prints the key for --purpose, as 'p2pkey key' does;
  decrypt   decrypts an age file made by 'p2pkey encrypt' (stdin to stdout);
  encrypt   encrypts as 'p2pkey encrypt' does;
  show      prints what the kit is for (cluster, peer, generation), not the key.`,
		Example: `  p2pkey recover --kit node1.kit --identity ops.key show
  p2pkey recover --kit node1.kit --identity ops.key key --purpose luks/data --format raw
  p2pkey recover --kit node1.kit --identity ops.key decrypt < secrets.tar.age | tar x`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return &statusError{code: exitUsage, err: fmt.Errorf("recover needs a command: key, decrypt, encrypt or show\nRun '%s --help' for usage", cmd.CommandPath())}
		},
	}
	cmd.PersistentFlags().StringVar(&f.kit, "kit", "", "the recovery kit file")
	cmd.PersistentFlags().StringVar(&f.identity, "identity", "", "age identity file, or unencrypted SSH private key, that opens the kit")

	var purpose, format string
	keyCmd := &cobra.Command{
		Use:   "key [--purpose NAME] [--format hex|base64|raw]",
		Short: "Print a key derived from the kit's K, as 'p2pkey key' does",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if purpose == "" {
				return &statusError{code: exitUsage, err: errors.New("--purpose must not be empty")}
			}
			if err := checkFormat(format); err != nil {
				return err
			}
			kit, err := f.open()
			if err != nil {
				return err
			}
			defer kit.Wipe()
			k, err := kit.DeriveKey(purpose)
			if err != nil {
				return err
			}
			defer clear(k)
			return writeKey(cmd.OutOrStdout(), k, format)
		},
	}
	keyCmd.Flags().StringVar(&purpose, "purpose", "default", "what the key is for")
	keyCmd.Flags().StringVar(&format, "format", "hex", "output format: hex, base64 or raw")

	ageCmd := func(use, short string, run func(out io.Writer, in io.Reader, pass, purpose string, tc *tagContext) error) *cobra.Command {
		var purpose string
		c := &cobra.Command{
			Use:   use + " [--purpose NAME] < IN > OUT",
			Short: short,
			Args:  usageArgs(0),
			RunE: func(cmd *cobra.Command, args []string) error {
				kit, err := f.open()
				if err != nil {
					return err
				}
				defer kit.Wipe()
				k, err := kit.DeriveKey(purpose)
				if err != nil {
					return err
				}
				pass := hex.EncodeToString(k)
				clear(k)
				tc := &tagContext{cluster: kit.ClusterID, self: kit.PeerID.String(), purposes: []string{agePurpose}}
				return run(cmd.OutOrStdout(), cmd.InOrStdin(), pass, purpose, tc)
			},
		}
		c.Flags().StringVar(&purpose, "purpose", agePurpose, "purpose of the derived key")
		return c
	}

	showCmd := &cobra.Command{
		Use:   "show [--json]",
		Short: "Print what the kit is for, without its key",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			kit, err := f.open()
			if err != nil {
				return err
			}
			defer kit.Wipe()
			info := map[string]any{
				"cluster_id": kit.ClusterID, "peer_id": kit.PeerID.String(),
				"generation": kit.Generation, "created_at": kit.CreatedAt,
			}
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), info)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "peer:        %s\n", kit.PeerID)
			fmt.Fprintf(w, "cluster:     %s\n", kit.ClusterID)
			fmt.Fprintf(w, "generation:  %d\n", kit.Generation)
			fmt.Fprintf(w, "created:     %s\n", kit.CreatedAt.Format(time.RFC3339))
			fmt.Fprintln(w, "key:         present, passes its key check")
			return nil
		},
	}
	showCmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")

	cmd.AddCommand(keyCmd,
		ageCmd("decrypt", "Decrypt an age file made by 'p2pkey encrypt'", func(out io.Writer, in io.Reader, pass, purpose string, tc *tagContext) error {
			// As decrypt does: nothing is written until the file is
			// authenticated.
			buf := limitedBuffer{max: maxDecryptBuffer}
			defer clear(buf.b.Bytes())
			if err := ageDecrypt(&buf, in, pass, purpose, func() *tagContext { return tc }); err != nil {
				return err
			}
			_, err := out.Write(buf.b.Bytes())
			return err
		}),
		ageCmd("encrypt", "Encrypt as 'p2pkey encrypt' does", func(out io.Writer, in io.Reader, pass, purpose string, tc *tagContext) error {
			return ageEncrypt(out, in, pass, makeTag(tc.cluster, tc.self, purpose))
		}),
		showCmd)
	return cmd
}
