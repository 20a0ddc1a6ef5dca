package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ---- CBT ----

type qcdaRequest struct {
	This        string `xml:"_this"`
	Snapshot    string `xml:"snapshot"`
	DeviceKey   int32  `xml:"deviceKey"`
	StartOffset int64  `xml:"startOffset"`
	ChangeID    string `xml:"changeId"`
}

type logEntry struct {
	Extents  [][2]int64 `json:"extents"`
	ChangeID string     `json:"changeId"`
	Reset    bool       `json:"reset"`
}

var logMu sync.Mutex

func appendLog(flat string, entry map[string]interface{}) {
	if flat == "" {
		return
	}
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.OpenFile(flat+".changes.jsonl", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	b, _ := json.Marshal(entry)
	_, _ = f.Write(append(b, '\n'))
}

func readLog(flat string) []logEntry {
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.Open(flat + ".changes.jsonl")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// changedSince is the union of logged writes after marker `since` ("*": all) up to marker `until`.
func changedSince(entries []logEntry, since, until string) ([][2]int64, bool) {
	end := len(entries)
	for i, e := range entries {
		if until != "" && e.ChangeID == until {
			end = i
			break
		}
	}
	start := 0
	if since != "*" {
		start = -1
		for i := 0; i < end; i++ {
			if entries[i].Reset {
				start = -1
			} else if entries[i].ChangeID == since {
				start = i + 1
			}
		}
		if start < 0 {
			return nil, false
		}
	}
	var all [][2]int64
	for _, e := range entries[start:end] {
		all = append(all, e.Extents...)
	}
	return mergeExtents(all), true
}

func mergeExtents(in [][2]int64) [][2]int64 {
	sort.Slice(in, func(i, j int) bool { return in[i][0] < in[j][0] })
	var out [][2]int64
	for _, e := range in {
		if e[1] <= 0 {
			continue
		}
		if n := len(out); n > 0 && e[0] <= out[n-1][0]+out[n-1][1] {
			if end := e[0] + e[1]; end > out[n-1][0]+out[n-1][1] {
				out[n-1][1] = end - out[n-1][0]
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

func (h *harness) queryChangedDiskAreas(w http.ResponseWriter, body []byte) {
	var req qcdaRequest
	if err := decodeMethod(body, "QueryChangedDiskAreas", &req); err != nil {
		writeFault(w, "InvalidRequest", err.Error(), "")
		return
	}
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: req.Snapshot}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		writeFault(w, "ManagedObjectNotFound", "snapshot not found", "")
		return
	}
	var disk *types.VirtualDisk
	for _, d := range snap.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == req.DeviceKey {
			disk = vd
		}
	}
	if disk == nil {
		writeFault(w, "InvalidArgument", "no disk with that device key", "deviceKey")
		return
	}
	backing, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if backing == nil || backing.ChangeId == "" {
		writeFault(w, "FileFault", "change tracking is not enabled for this disk", "")
		return
	}
	capacity := disk.CapacityInBytes
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		writeFault(w, "InvalidArgument", "startOffset beyond the disk", "startOffset")
		return
	}
	areas, known := changedSince(readLog(flatPath(backing.FileName)), req.ChangeID, backing.ChangeId)
	if !known {
		writeFault(w, "InvalidArgument", "A specified parameter was not correct: changeId", "changeId")
		return
	}
	start := req.StartOffset
	end := start + h.pageBytes
	if end > capacity {
		end = capacity
	}
	h.mu.Lock()
	lie := h.cbtLie
	h.mu.Unlock()
	var clipped [][2]int64
	for _, a := range areas {
		lo, hi := a[0], a[0]+a[1]
		if lie != "outside" {
			if lo < start {
				lo = start
			}
			if hi > end {
				hi = end
			}
		}
		if hi > lo && (lie == "outside" || (lo >= start && hi <= end)) {
			clipped = append(clipped, [2]int64{lo, hi - lo})
		}
	}
	spanStart, spanLen := start, end-start
	switch lie {
	case "gap":
		spanStart += 4096
		spanLen -= 4096
	case "overlap":
		if spanStart > 0 {
			spanStart -= 4096
			spanLen += 4096
		}
	case "stall":
		spanLen = 0
	case "omit":
		if len(clipped) > 0 {
			clipped = clipped[1:]
		}
	}
	var b strings.Builder
	b.WriteString(`<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval>`)
	fmt.Fprintf(&b, "<startOffset>%d</startOffset><length>%d</length>", spanStart, spanLen)
	for _, a := range clipped {
		fmt.Fprintf(&b, "<changedArea><start>%d</start><length>%d</length></changedArea>", a[0], a[1])
	}
	b.WriteString(`</returnval></QueryChangedDiskAreasResponse>`)
	writeBody(w, http.StatusOK, b.String())
}
