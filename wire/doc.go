// Package wire is the one way p2pkey's request-response protocols read and
// write their messages and run their streams.
//
// Every message is a protobuf message with a version field, sent
// uvarint-length-delimited (as protodelim and go-msgio's pbio write it). A
// reader gives a size limit and the versions it speaks; a length prefix over
// the limit is refused before anything is allocated.
//
//   - ReadMsg and WriteMsg read and write one such message. Their errors
//     keep their identity (errors.Is) across every layer above: ErrTooLarge,
//     ErrBadVersion and ErrMalformed mean the peer's bytes were refused;
//     ErrIncomplete and ErrTimeout mean the stream failed first, so a slow
//     or vanished peer is never reported as a malformed one.
//   - A Protocol names what both ends agree on: the protocol ID, the
//     resource manager service, the largest request and response, the time
//     an exchange may take and the versions spoken.
//   - Serve is the skeleton of a stream handler, the shape of go-libp2p's
//     own protocols (holepunch, autonat): attach the stream to the
//     service, reserve its largest message in the stream's scope, set a
//     deadline, read one request, hand it to the caller's function, write
//     the response, then Close, or Reset on any error. Reply answers without
//     reading, for a refusal decided up front.
//   - Open and Call are the client side: the same scope, reservation and
//     deadline on the outgoing stream, the stream reset when the caller's
//     context ends, and ErrNotSent when the peer cannot have seen the
//     request (which a caller retrying a non-idempotent request needs).
//
// It owns no protocol and knows no message type: packages consensus, node
// and shares declare their own Protocol and messages. It imports nothing
// from this module.
package wire
