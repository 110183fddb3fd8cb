using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>DMA mapping of a 5.1-era range (kernel 5.1: hmm_range_dma_map / hmm_range_dma_unmap).</summary>
public sealed partial class HmmMirrorRange
{
    /// <summary>
    /// Faults the range (<see cref="Fault"/> with <paramref name="block"/>) and maps every entry that holds a page for
    /// <paramref name="device"/>: one mapping of <c>1 &lt;&lt; PageShift</c> bytes per entry, bidirectional when the entry is
    /// writable, to-device otherwise (kernel: hmm_range_dma_map). Entries without a page, and device-private pages, get
    /// DMA address 0. The caller holds the mmap read lock, as for <see cref="Fault"/>.
    /// </summary>
    /// <param name="device">The device.</param>
    /// <param name="daddrs">One DMA address per entry (output).</param>
    /// <param name="block">As for <see cref="Fault"/>.</param>
    /// <param name="mapped">Number of entries mapped.</param>
    /// <returns>Ok; any error of <see cref="Fault"/> (EAGAIN with the mmap lock released); EBUSY when the fault reached no
    /// entry or the range was invalidated while mapping (everything mapped so far is unmapped again); EFAULT on a
    /// mapping error (likewise undone); EINVAL for an address array of the wrong size.</returns>
    public Errno DmaMap(DmaDevice device, ulong[] daddrs, bool block, out long mapped)
    {
        ArgumentNullException.ThrowIfNull(device);
        mapped = 0;
        if (daddrs is null || daddrs.Length != Pfns.Length)
        {
            return Errno.EINVAL;
        }
        Errno r = Fault(block, out long valid);
        if (r != Errno.Ok)
        {
            return r;
        }
        if (valid == 0)
        {
            return Errno.EBUSY;
        }
        HmmPfnEncoding enc = Encoding;
        int order = PageShift - Page.Shift;
        int i = 0;
        Errno err = Errno.Ok;
        for (; i < Pfns.Length; i++)
        {
            daddrs[i] = 0;
            ulong e = Pfns[i];
            ulong pfn = enc.ToPfn(e);
            if (pfn == ulong.MaxValue || (e & enc.DevicePrivate) != 0)
            {
                continue;
            }
            if (!Valid)
            {
                err = Errno.EBUSY;
                break;
            }
            daddrs[i] = device.MapPage(pfn, order, (e & enc.Write) != 0 ? DmaDirection.Bidirectional : DmaDirection.ToDevice);
            if (daddrs[i] == 0)
            {
                err = Errno.EFAULT;
                break;
            }
            mapped++;
        }
        if (err == Errno.Ok)
        {
            return Errno.Ok;
        }
        for (int j = 0; j < i; j++)
        {
            if (daddrs[j] != 0)
            {
                device.UnmapPage(daddrs[j], order, (Pfns[j] & enc.Write) != 0 ? DmaDirection.Bidirectional : DmaDirection.ToDevice);
                daddrs[j] = 0;
            }
        }
        mapped = 0;
        return err;
    }

    /// <summary>
    /// Unmaps what <see cref="DmaMap"/> mapped (kernel: hmm_range_dma_unmap): for every entry holding a page, if it is
    /// writable and <paramref name="dirty"/> is set the page is marked dirty (file pages through their mapping, so
    /// writeback sees the device's writes), the DMA mapping is removed, the entry becomes <c>None</c> and its address 0.
    /// Call with the driver's update lock held so no invalidation runs concurrently (marking dirty is only safe then).
    /// </summary>
    /// <param name="device">The device used for <see cref="DmaMap"/>.</param>
    /// <param name="daddrs">The addresses <see cref="DmaMap"/> filled in.</param>
    /// <param name="dirty">True when the device may have written the writable pages.</param>
    /// <param name="count">Entries unmapped.</param>
    /// <returns>Ok; EINVAL for an empty or unregistered range or an address array of the wrong size.</returns>
    public Errno DmaUnmap(DmaDevice device, ulong[] daddrs, bool dirty, out long count)
    {
        ArgumentNullException.ThrowIfNull(device);
        count = 0;
        if (End <= Start || Pfns.Length == 0 || daddrs is null || daddrs.Length != Pfns.Length)
        {
            return Errno.EINVAL;
        }
        HmmPfnEncoding enc = Encoding;
        int order = PageShift - Page.Shift;
        for (int i = 0; i < Pfns.Length; i++)
        {
            ulong e = Pfns[i];
            ulong pfn = enc.ToPfn(e);
            if (pfn == ulong.MaxValue)
            {
                continue;
            }
            bool writable = (e & enc.Write) != 0;
            if (writable && dirty && (e & enc.DevicePrivate) == 0)
            {
                for (ulong k = 0; k < 1UL << order; k++)
                {
                    DmaDevice.MarkPageDirty(device.Memory, pfn + k);
                }
            }
            if (daddrs[i] != 0)
            {
                device.UnmapPage(daddrs[i], order, writable ? DmaDirection.Bidirectional : DmaDirection.ToDevice);
            }
            Pfns[i] = enc.None;
            daddrs[i] = 0;
            count++;
        }
        return Errno.Ok;
    }
}
