package gateway

import (
	"github.com/diglett/diglett/internal/protocol"
)

// newAgent reports whether ss comes from another agent process than every
// session of members: a second session of one agent (its Connections) is
// not news. Sessions of agents that name no instance count as their own.
func newAgent(members []*session, ss *session) bool {
	if ss.instance == "" {
		return true
	}
	for _, m := range members {
		if m.instance == ss.instance {
			return false
		}
	}
	return true
}

// countAgents counts the agent processes among members.
func countAgents(members []*session) int {
	seen := make(map[string]bool, len(members))
	n := 0
	for _, m := range members {
		if m.instance == "" {
			n++
			continue
		}
		if !seen[m.instance] {
			seen[m.instance] = true
			n++
		}
	}
	return n
}

// noticeJoined tells the agents already serving t (members, before the
// new one joined) that another agent joined: one session of each agent
// process that reads notices. The notices are written off the join's
// path; a write that blocks ends with its session.
func (t *tunnel) noticeJoined(members []*session, agents int) {
	told := make(map[string]bool, len(members))
	for _, m := range members {
		if !m.notices || told[m.instance] {
			continue
		}
		told[m.instance] = true
		n := &protocol.Notice{Event: protocol.NoticeMemberJoined, Name: t.name, Agents: agents}
		go func() {
			if err := m.reply(m.login.ctrl, n); err != nil {
				m.log.Debug("notice not sent", "event", n.Event, "tunnel", n.Name, "err", err)
			}
		}()
	}
}
