using System.Diagnostics;

namespace Hetmem.Physical;

/// <summary>The buddy allocator half of <see cref="PhysicalMemory"/> (kernel: mm/page_alloc.c).</summary>
public sealed partial class PhysicalMemory
{
    // Free-list links of a free block's first frame are packed into FrameInfo.Index: next in the low 32 bits,
    // previous in the high 32 bits, as RAM frame indices (NoLink = none). The order sits in the flag's order bits.

    private uint AllocFromBuddyLocked(int order)
    {
        Debug.Assert(Monitor.IsEntered(_buddyLock));
        int o = order;
        while (o <= _topOrder && _freeHead[o] == NoLink)
        {
            o++;
        }
        if (o > _topOrder)
        {
            return NoLink;
        }
        uint idx = _freeHead[o];
        RemoveFreeLocked(idx, o);
        while (o > order)
        {
            o--;
            uint buddy = idx + (1u << o);
            PushFreeLocked(buddy, o);
        }
        _freeFrames -= 1L << order;
        return idx;
    }

    private void FreeToBuddyLocked(uint idx, int order)
    {
        Debug.Assert(Monitor.IsEntered(_buddyLock));
        _freeFrames += 1L << order;
        // The zero page (the last frame) is never free, so merging stops below it naturally.
        while (order < _topOrder)
        {
            uint buddy = idx ^ (1u << order);
            if (buddy >= RamFrames)
            {
                break;
            }
            ref FrameInfo b = ref _frames[buddy];
            if ((b.Flags & (uint)FrameFlags.Buddy) == 0 || b.Order != order)
            {
                break;
            }
            RemoveFreeLocked(buddy, order);
            idx = Math.Min(idx, buddy);
            order++;
        }
        PushFreeLocked(idx, order);
    }

    private void PushFreeLocked(uint idx, int order)
    {
        ref FrameInfo f = ref _frames[idx];
        uint head = _freeHead[order];
        f.Flags = (uint)FrameFlags.Buddy | ((uint)order << 24);
        f.Index = ((ulong)NoLink << 32) | head;
        if (head != NoLink)
        {
            ref FrameInfo h = ref _frames[head];
            h.Index = ((ulong)idx << 32) | (uint)h.Index;
        }
        _freeHead[order] = idx;
        _freeCount[order]++;
    }

    private void RemoveFreeLocked(uint idx, int order)
    {
        ref FrameInfo f = ref _frames[idx];
        uint next = (uint)f.Index;
        uint prev = (uint)(f.Index >> 32);
        if (prev != NoLink)
        {
            ref FrameInfo p = ref _frames[prev];
            p.Index = (p.Index & 0xFFFF_FFFF_0000_0000UL) | next;
        }
        else
        {
            _freeHead[order] = next;
        }
        if (next != NoLink)
        {
            ref FrameInfo n = ref _frames[next];
            n.Index = ((ulong)prev << 32) | (uint)n.Index;
        }
        f.Flags = 0;
        f.Index = 0;
        _freeCount[order]--;
    }

    /// <summary>Free blocks per order (kernel: /proc/buddyinfo).</summary>
    public ulong[] BuddyInfo()
    {
        lock (_buddyLock)
        {
            return (ulong[])_freeCount.Clone();
        }
    }
}
