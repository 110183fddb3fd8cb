using CsCheck;
using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Devices.Rdma;

namespace Hetmem.Tests.Fuzz;

/// <summary>
/// ibv_reg_mr and ibv_post_send with random and boundary inputs. Registration returns the errno of
/// ib_check_mr_access / ib_umem_get (EINVAL for bad flags, zero, wrapping, oversized or implicit-without-ODP ranges;
/// EFAULT for a range beyond user space or, pinned, a page that is unmapped, PROT_NONE, VM_PFNMAP or not writable when
/// write access is asked) and a rejected registration leaves no region, no pin and no layout change behind. Work
/// requests with bad lkeys, rkeys, bounds, rights or alignment complete with the status the verbs define
/// (LOC_PROT_ERR moving the QP to ERR and flushing later work, REM_ACCESS_ERR, REM_INV_REQ_ERR), malformed ones are
/// refused at post time with EINVAL, and remote memory outside a successful write's range never changes.
/// </summary>
/// <remarks>Replay: <c>CsCheck_Seed=&lt;printed seed&gt; dotnet test --filter FullyQualifiedName~RdmaFuzzTests</c>.</remarks>
public sealed class RdmaFuzzTests
{
    private const ulong P = FuzzSupport.P;
    private const ulong Base = 0x1000_0000_0000;
    private const ulong A = Base, Ro = Base + 16 * P, None = Base + 20 * P, Hole = Base + 24 * P, Pfn = Base + 28 * P, End = Base + 29 * P;

    private const AccessFlags Known = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC
        | AccessFlags.ON_DEMAND | AccessFlags.HUGETLB | AccessFlags.FLUSH_GLOBAL | AccessFlags.FLUSH_PERSISTENT;

    private static readonly Gen<ulong> s_addr = Gen.Frequency<ulong>(
        (6, Gen.Int[0, 30].Select(i => Base + (ulong)i * P)),
        (2, Gen.Select(Gen.Int[0, 30], Gen.OneOf(1, 8, 4095), (i, u) => Base + (ulong)i * P + (ulong)u)),
        (1, Gen.OneOf(0UL, AddressSpace.TaskSize - P, AddressSpace.TaskSize, ulong.MaxValue - 100, 1UL << 63)));

    private static readonly Gen<ulong> s_length = Gen.Frequency<ulong>(
        (6, Gen.Int[1, 20].Select(i => (ulong)i * P)),
        (2, Gen.OneOf(1UL, 7UL, P - 1, P + 1)),
        (1, Gen.OneOf(0UL, ulong.MaxValue, 1UL << 46, (1UL << 46) + 1, 1UL << 45, ulong.MaxValue - Base)));

    private static readonly Gen<AccessFlags> s_access = Gen.Frequency<AccessFlags>(
        (6, Gen.Int[0, 15].Select(Gen.Bool, (bits, odp) => (AccessFlags)bits | (odp ? AccessFlags.ON_DEMAND : 0))),
        (1, Gen.OneOf(AccessFlags.HUGETLB | AccessFlags.ON_DEMAND, AccessFlags.FLUSH_GLOBAL, AccessFlags.FLUSH_PERSISTENT | AccessFlags.LOCAL_WRITE)),
        (1, Gen.OneOf((AccessFlags)16, (AccessFlags)32, (AccessFlags)1024, (AccessFlags)int.MinValue, (AccessFlags)(-1))));

    private enum Cls
    {
        Rw,
        ReadOnly,
        NoAccess,
        Hole,
        PfnMap,
    }

    private static Cls ClassOf(ulong page) => page switch
    {
        >= A and < Ro => Cls.Rw,
        >= Ro and < None => Cls.ReadOnly,
        >= None and < Hole => Cls.NoAccess,
        >= Pfn and < End => Cls.PfnMap,
        _ => Cls.Hole,
    };

    /// <summary>The errno ibv_reg_mr returns for this input over the fixed layout.</summary>
    private static Errno Expected(ulong addr, ulong length, AccessFlags access)
    {
        if ((access & ~Known) != 0 || (access & (AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_ATOMIC)) != 0 && (access & AccessFlags.LOCAL_WRITE) == 0)
        {
            return Errno.EINVAL;
        }
        if (length == 0)
        {
            return Errno.EINVAL;
        }
        bool odp = (access & AccessFlags.ON_DEMAND) != 0;
        if (addr == 0 && length == ulong.MaxValue)
        {
            return odp && (access & AccessFlags.HUGETLB) == 0 ? Errno.Ok : Errno.EINVAL;
        }
        if (addr + length < addr || length > 1UL << 46)
        {
            return Errno.EINVAL;
        }
        ulong first = addr & ~(P - 1), last = (addr + length + P - 1) & ~(P - 1);
        if (last < addr + length)
        {
            return odp ? Errno.EOVERFLOW : Errno.EINVAL;   // ib_init_umem_odp / ib_umem_get: the aligned end wraps
        }
        if (last > AddressSpace.TaskSize)
        {
            return Errno.EFAULT;
        }
        if (odp)
        {
            return (last - first) / P > int.MaxValue / 8 ? Errno.ENOMEM : Errno.Ok;   // kvcalloc of the PFN list: at most INT_MAX bytes
        }
        if ((last - first) / P > uint.MaxValue)
        {
            return Errno.EINVAL;
        }
        bool write = (access & (AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_ATOMIC)) != 0;
        for (ulong page = first; page < last; page += P)
        {
            Cls c = ClassOf(page);
            if (c is Cls.Hole or Cls.NoAccess or Cls.PfnMap || c == Cls.ReadOnly && write)
            {
                return Errno.EFAULT;
            }
        }
        return Errno.Ok;
    }

    [Fact]
    public void RegMrReturnsTheVerbsErrnoAndARejectedRegistrationLeavesNothingBehind()
    {
        using var mem = new PhysicalMemory(64UL << 20);
        using var dev = new RdmaDevice("fuzz_rxe");
        long usedAtStart = mem.UsedFrames;
        ulong pfnFrame = mem.Allocate(0, zero: true);
        Gen.Select(s_addr, s_length, s_access).Array[1, 8].Sample(calls =>
        {
            var mm = new AddressSpace(mem);
            ProtectionDomain pd = dev.AllocPd(mm);
            var regions = new List<MemoryRegion>();
            try
            {
                const MapFlags Fixed = MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed;
                mm.Mmap(A, 16 * P, Prot.Read | Prot.Write, Fixed);
                mm.Mmap(Ro, 4 * P, Prot.Read, Fixed);
                mm.Mmap(None, 4 * P, Prot.None, Fixed);
                Assert.Equal(Pfn, mm.MapPfnRange(Pfn, pfnFrame, 1, Prot.Read | Prot.Write));
                foreach ((ulong addr, ulong length, AccessFlags access) in calls)
                {
                    Errno expected = Expected(addr, length, access);
                    string maps = string.Join("\n", mm.Maps().Select(m => $"{m.Start:x}-{m.End:x} {m.Perms}"));
                    int count = pd.RegionCount;
                    MemoryRegion? mr = null;
                    Errno got = FuzzSupport.ErrnoOf(() => mr = pd.RegMr(addr, length, access));
                    string what = $"reg_mr(0x{addr:x}, 0x{length:x}, {access})";
                    Assert.True(expected == got, $"{what}: expected {expected}, got {got}");
                    Assert.Equal(maps, string.Join("\n", mm.Maps().Select(m => $"{m.Start:x}-{m.End:x} {m.Perms}")));
                    if (got != Errno.Ok)
                    {
                        Assert.Equal(count, pd.RegionCount);
                        continue;
                    }
                    Assert.Equal(count + 1, pd.RegionCount);
                    Assert.Equal((addr, length, access), (mr!.Addr, mr.Length, mr.Access));
                    Assert.Same(mr, dev.LookupKey(mr.Lkey));
                    regions.Add(mr);
                }
            }
            finally
            {
                foreach (MemoryRegion r in regions)
                {
                    r.Deregister();
                }
                pd.Dealloc();
                mm.Exit();
            }
            // Every pin of a failed or deregistered pinned region was dropped: all frames but the PFN map's are free.
            Assert.Equal(usedAtStart + 1, mem.UsedFrames);
        }, iter: FuzzSupport.Iter(300), threads: 1, print: calls => string.Join("; ", calls.Select(c => $"reg_mr(0x{c.Item1:x}, 0x{c.Item2:x}, {c.Item3})")));
        mem.Put(pfnFrame);
    }

    /// <summary>One work request: which local key and offset, which remote key and offset, the opcode and length.</summary>
    public sealed record Wr(WrOpcode Opcode, int LocalKey, long LocalOffset, uint Length, int RemoteKey, long RemoteOffset)
    {
        public override string ToString() => $"{Opcode} local(key {LocalKey}, +{LocalOffset}, {Length} B) remote(key {RemoteKey}, {RemoteOffset:+0;-0})";
    }

    private static readonly Gen<Wr> s_wr = Gen.Select(
        Gen.Frequency<WrOpcode>((3, Gen.Const(WrOpcode.RDMA_WRITE)), (3, Gen.Const(WrOpcode.RDMA_READ)), (1, Gen.OneOf(WrOpcode.ATOMIC_FETCH_AND_ADD, WrOpcode.ATOMIC_CMP_AND_SWP))),
        Gen.Frequency<int>((8, Gen.Const(0)), (1, Gen.OneOf(1, 2, 3))),
        Gen.Frequency<long>((8, Gen.Int[0, 4096].Select(i => (long)i)), (1, Gen.OneOf(-8L, (long)RdmaTestBed.ClientBufBytes - 4, (long)RdmaTestBed.ClientBufBytes))),
        Gen.Frequency<uint>((6, Gen.OneOf(8u, 1u, 64u, 4096u)), (1, Gen.OneOf(4u, 4097u, 8192u))),
        Gen.Frequency<int>((6, Gen.Const(0)), (2, Gen.OneOf(1, 2)), (1, Gen.OneOf(3, 4))),
        Gen.Frequency<long>((6, Gen.Int[0, 4088].Select(i => (long)i)), (1, Gen.OneOf(-8L, -1L, 4090L, 4096L, 5L))),
        (op, lk, lo, len, rk, ro) => new Wr(op, lk, lo, len, rk, ro));

    [Fact]
    public void WorkRequestsWithBadKeysBoundsOrRightsCompleteWithTheVerbsStatus()
    {
        s_wr.Array[1, 6].Sample(wrs =>
        {
            using var bed = new RdmaTestBed(attr: new QpAttr { RnrRetry = 7 });
            ulong region = bed.MapServer(3 * P);
            byte[] sentinel = RdmaTestBed.Pattern(3 * (int)P, 77);
            bed.ServerCpu.Write(region, sentinel);
            const AccessFlags All = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND;
            MemoryRegion full = bed.ServerPd.RegMr(region + P, P, All);
            MemoryRegion readOnly = bed.ServerPd.RegMr(region + P, P, AccessFlags.REMOTE_READ | AccessFlags.ON_DEMAND);
            MemoryRegion localNoWrite = bed.ClientPd.RegMr(bed.ClientBuf, P, AccessFlags.ON_DEMAND);
            ProtectionDomain otherPd = bed.ClientDev.AllocPd(bed.ClientMm);
            MemoryRegion foreign = otherPd.RegMr(bed.ClientBuf, P, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
            bool qpInError = false;
            foreach (Wr w in wrs)
            {
                bool atomic = w.Opcode is WrOpcode.ATOMIC_FETCH_AND_ADD or WrOpcode.ATOMIC_CMP_AND_SWP;
                MemoryRegion? local = w.LocalKey switch { 0 => bed.ClientMr, 1 => localNoWrite, 2 => foreign, _ => null };
                uint lkey = local?.Lkey ?? bed.ClientMr.Lkey + 0x300;
                (MemoryRegion? remote, uint rkey) = w.RemoteKey switch
                {
                    0 or 3 => ((MemoryRegion?)full, full.Rkey),
                    1 or 4 => (readOnly, readOnly.Rkey),
                    _ => (null, full.Rkey ^ 0x5500u),
                };
                ulong localAddr = (ulong)((long)bed.ClientBuf + w.LocalOffset);
                ulong remoteAddr = (ulong)((long)region + (long)P + w.RemoteOffset);
                var wr = new SendWr
                {
                    WrId = 42,
                    Opcode = w.Opcode,
                    SendFlags = SendFlags.SIGNALED,
                    SgList = [new Sge(localAddr, w.Length, lkey)],
                    RemoteAddr = remoteAddr,
                    Rkey = rkey,
                    CompareAdd = 1,
                    Swap = 2,
                };
                byte[] before = new byte[3 * P];
                bed.ServerCpu.Read(region, before);
                Errno posted = FuzzSupport.ErrnoOf(() => bed.ClientQp.PostSend(wr));
                if (atomic && w.Length != 8)
                {
                    Assert.True(posted == Errno.EINVAL, $"{w}: an atomic without one 8-byte SGE must be refused, got {posted}");
                    continue;
                }
                Assert.True(posted == Errno.Ok, $"{w}: post_send refused with {posted}");
                WorkCompletion wc = bed.ClientCq.Wait(RdmaTestBed.WaitTime);
                Assert.Equal(42UL, wc.WrId);

                // The verbs' answer, in the order the NIC checks: QP state, local SGE, remote request.
                bool writesLocal = w.Opcode != WrOpcode.RDMA_WRITE;
                bool localOk = local is not null && local != foreign && w.LocalOffset >= 0 && (ulong)w.LocalOffset + w.Length <= local.Length
                    && (!writesLocal || (local.Access & AccessFlags.LOCAL_WRITE) != 0);
                AccessFlags need = w.Opcode switch
                {
                    WrOpcode.RDMA_WRITE => AccessFlags.REMOTE_WRITE,
                    WrOpcode.RDMA_READ => AccessFlags.REMOTE_READ,
                    _ => AccessFlags.REMOTE_ATOMIC,
                };
                bool remoteOk = remote is not null && w.RemoteOffset >= 0 && w.RemoteOffset + w.Length <= (long)P && (remote.Access & need) != 0;
                WcStatus expected = qpInError ? WcStatus.WR_FLUSH_ERR
                    : !localOk ? WcStatus.LOC_PROT_ERR
                    : atomic && w.RemoteOffset % 8 != 0 ? WcStatus.REM_INV_REQ_ERR   // rxe: RESPST_ERR_MISALIGNED_ATOMIC comes first
                    : !remoteOk ? WcStatus.REM_ACCESS_ERR
                    : WcStatus.SUCCESS;
                Assert.True(expected == wc.Status, $"{w}: expected {expected}, got {wc}");
                if (expected == WcStatus.LOC_PROT_ERR)
                {
                    qpInError = true;
                    Assert.Equal(QpState.ERR, bed.ClientQp.State);
                }

                // Remote bytes outside [remoteAddr, +len) of a successful write or atomic never change.
                byte[] after = new byte[3 * P];
                bed.ServerCpu.Read(region, after);
                long lo = (long)P + w.RemoteOffset, hi = lo + (atomic ? 8 : w.Length);
                bool changes = wc.Status == WcStatus.SUCCESS && w.Opcode != WrOpcode.RDMA_READ;
                for (long i = 0; i < after.Length; i++)
                {
                    if (!(changes && i >= lo && i < hi) && after[i] != before[i])
                    {
                        Assert.Fail($"{w}: remote byte {i} changed from {before[i]} to {after[i]} ({wc.Status})");
                    }
                }
            }
            bed.AssertHealthy();
        }, iter: FuzzSupport.Iter(25), threads: 1, print: wrs => string.Join("; ", wrs.Select(w => w.ToString())));
    }
}
