package proxy

import (
	"time"

	"github.com/pgveil/pgveil/rewrite"
)

// A masked session's proxy counts the client's sync points (Sync, Query)
// to know when every answer has arrived (session.pending) and which batch
// an answer belongs to (syncsSent, syncsDone). PostgreSQL ignores a Sync
// (or Flush) it reads during COPY FROM STDIN (src/backend/commands/
// copyfromparse.c, CopyGetData), and libpq sends one after the Execute of
// a COPY run with the extended protocol, before any data: counted, it
// would never be answered. So the proxy follows each COPY FROM STDIN from
// the message that starts it (a Query holding one, the Execute of a
// portal that is one) to the client's CopyDone or CopyFail:
//
//   - until the server has answered that statement (copyStarting), a Sync
//     or any other message than COPY data waits for the answer, which the
//     server sends at once (CopyInResponse and ErrorResponse are flushed);
//   - once the server sent CopyInResponse (copyRunning), a Sync is not
//     sent on at all: the server would ignore it, or, if the COPY failed
//     before it read the Sync, answer it, which the proxy could not tell
//     apart. Dropping it keeps the count exact either way; the client sees
//     what a direct session sees when the server reads the Sync during
//     the COPY (nothing);
//   - if the statement failed or was skipped (ErrorResponse or
//     ReadyForQuery of its batch before any CopyInResponse), or once the
//     COPY ended on the server (CommandComplete, ErrorResponse), Syncs are
//     sent and counted as usual: the server answers each of them.
//
// Any other message during copyRunning would make the server fail the
// COPY ("unexpected message type"); the session ends with 08P01 instead,
// as no client sends one. A query text holds at most one COPY FROM STDIN
// (rewrite refuses more), so a sync point starts at most one.
const (
	copyNone int32 = iota
	copyStarting
	copyRunning
)

// copiesIn reports whether plan has a COPY ... FROM STDIN.
func copiesIn(plan *rewrite.Plan) bool {
	if plan == nil {
		return false
	}
	for _, st := range plan.Statements {
		if st.Copy != nil && st.Copy.From {
			return true
		}
	}
	return false
}

// copyStart records that the message about to be sent (a Query, or an
// Execute before its Sync) starts a COPY FROM STDIN (client side). It is
// called before the message is written, so that the server's answer
// finds the state.
func (m *maskedSession) copyStart() {
	m.copyMu.Lock()
	defer m.copyMu.Unlock()
	batch := m.s.syncsSent.Load() + 1
	if m.copyFailed == batch {
		// An error earlier in its batch: the server skips it.
		return
	}
	m.copyBatch = batch
	m.copyPhase.Store(copyStarting)
}

// copyEnd records the client's CopyDone or CopyFail (client side, before
// it is sent). A COPY the server has not started yet (clients may stream
// the data without waiting for CopyInResponse) is remembered, so that its
// CopyInResponse is not taken for an unexpected one.
func (m *maskedSession) copyEnd() {
	if m.copyPhase.Load() == copyNone {
		return
	}
	m.copyMu.Lock()
	if m.copyPhase.Load() == copyStarting {
		m.copyEarly.Store(m.copyBatch)
	}
	m.copyPhase.Store(copyNone)
	m.copyMu.Unlock()
}

// copyGate runs on the client side before a message other than CopyData,
// CopyDone, CopyFail and Flush. While the server has not answered the
// statement that starts a COPY FROM STDIN, it waits for that answer;
// during the COPY, it reports that a Sync must be dropped, and refuses
// any other message.
func (m *maskedSession) copyGate(typ byte) (drop bool, err error) {
	if m.copyPhase.Load() == copyNone {
		return false, nil
	}
	if m.copyPhase.Load() == copyStarting {
		// The wait is bounded like refreshPath's, should the server not
		// answer as expected.
		limit := time.NewTimer(refreshWaitLimit)
		defer limit.Stop()
		for m.copyPhase.Load() == copyStarting {
			select {
			case <-m.copyDecided:
			case <-m.s.endingCh:
				return false, errClientGone
			case <-limit.C:
				return false, &protocolError{"the server did not answer the statement that starts a COPY FROM STDIN in time"}
			}
		}
	}
	if m.copyPhase.Load() != copyRunning {
		return false, nil
	}
	if typ == 'S' {
		return true, nil
	}
	return false, &protocolError{"a masked session may send only CopyData, CopyDone, CopyFail, Sync or Flush during COPY FROM STDIN"}
}

// copyAnswer follows the server's answers that decide a COPY FROM STDIN
// (server side): CopyInResponse ('G'), CommandComplete, ErrorResponse
// and ReadyForQuery. A CopyInResponse the proxy did not expect ends the
// session: it could no longer tell which Sync messages the server
// answers.
func (m *maskedSession) copyAnswer(typ byte) error {
	if typ != 'G' && typ != 'E' && m.copyPhase.Load() == copyNone && m.copyEarly.Load() == 0 {
		return nil
	}
	m.copyMu.Lock()
	defer m.copyMu.Unlock()
	batch := m.s.syncsDone.Load() + 1
	if typ == 'E' {
		m.copyFailed = batch
	}
	if m.copyEarly.Load() == batch && typ != 'C' {
		// The answer to a COPY the client ended early.
		m.copyEarly.Store(0)
		if typ == 'G' {
			return nil
		}
	}
	phase := m.copyPhase.Load()
	switch {
	case phase == copyStarting && batch == m.copyBatch && typ != 'C':
		// CopyInResponse: the COPY runs. ErrorResponse or ReadyForQuery:
		// it failed before it started, or was skipped after an earlier
		// error of its batch.
		if typ == 'G' {
			m.copyPhase.Store(copyRunning)
		} else {
			m.copyPhase.Store(copyNone)
		}
		select {
		case m.copyDecided <- struct{}{}:
		default:
		}
	case phase == copyRunning && (typ == 'C' || typ == 'E'):
		m.copyPhase.Store(copyNone) // the COPY ended on the server
	case typ == 'G', phase == copyRunning && typ == 'Z':
		return &protocolError{"the server answered a COPY FROM STDIN that pgveil did not expect"}
	}
	return nil
}
