package main

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ---- snapshots ----

func (h *harness) newChangeID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	parts := make([]string, len(b))
	for i := range b {
		parts[i] = hex.EncodeToString(b[i : i+1])
	}
	h.mu.Lock()
	h.snapCount++
	n := h.snapCount
	h.mu.Unlock()
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ") + "/" + strconv.Itoa(n)
}

// freshDevices replaces the VM's device slice and disk objects with copies, so that a snapshot that
// shares the old ones keeps them unchanged; with a changeId, it is set on every disk and logged.
func (h *harness) freshDevices(vm *simulator.VirtualMachine, changeID string) {
	old := vm.Config.Hardware.Device
	devices := make([]types.BaseVirtualDevice, len(old))
	copy(devices, old)
	for i, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		nd := *disk
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			nb := *b
			if changeID != "" {
				nb.ChangeId = changeID
				appendLog(flatPath(nb.FileName), map[string]interface{}{"changeId": changeID})
			}
			nd.Backing = &nb
		}
		devices[i] = &nd
	}
	vm.Config.Hardware.Device = devices
}

func (h *harness) createSnapshot(inner http.Handler, w http.ResponseWriter, r *http.Request, text string) {
	m := thisRe.FindStringSubmatch(text)
	var vm *simulator.VirtualMachine
	if m != nil {
		vm, _ = simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: m[1]}).(*simulator.VirtualMachine)
	}
	if vm != nil && quiesceRe.MatchString(text) {
		h.mu.Lock()
		fail := h.quiesceFail[vm.Name]
		h.mu.Unlock()
		if fail {
			// As on vCenter: the task is created, then ends in error.
			task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
				return nil, &types.ApplicationQuiesceFault{}
			})
			ref := task.Run()
			writeBody(w, http.StatusOK, `<CreateSnapshot_TaskResponse xmlns="urn:vim25"><returnval type="Task">`+
				ref.Value+`</returnval></CreateSnapshot_TaskResponse>`)
			return
		}
	}
	if vm != nil {
		simulator.Map.WithLock(vm, func() {
			id := ""
			if vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled {
				id = h.newChangeID()
			}
			h.freshDevices(vm, id)
		})
	}
	inner.ServeHTTP(w, r)
	if vm != nil {
		simulator.Map.WithLock(vm, func() { h.freshDevices(vm, "") })
	}
}

func (h *harness) removeSnapshot(inner http.Handler, w http.ResponseWriter, r *http.Request, text string) {
	var vmRef *types.ManagedObjectReference
	if m := thisRe.FindStringSubmatch(text); m != nil {
		if s, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: m[1]}).(*simulator.VirtualMachineSnapshot); ok {
			ref := s.Vm
			vmRef = &ref
		}
	}
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, r)
	if vmRef != nil {
		if vm, ok := simulator.Map.Get(*vmRef).(*simulator.VirtualMachine); ok {
			// vcsim 0.24 leaves a non-nil empty snapshot info that panics in Fetch.
			simulator.Map.WithLock(vm, func() {
				if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) == 0 {
					vm.Snapshot = nil
				}
			})
			if m := retvalRe.FindStringSubmatch(rec.Body.String()); m != nil {
				if task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: m[1]}).(*simulator.Task); ok {
					simulator.Map.WithLock(task, func() {
						ref := *vmRef
						task.Info.Entity = &ref
						task.Info.EntityName = vm.Name
					})
				}
			}
		}
	}
	copyResponse(w, rec)
}
