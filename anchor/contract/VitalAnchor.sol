// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title VitalAnchor: public timestamps for checkpoints of vitalchain's window log.
/// @notice A checkpoint is (root, size): the RFC 9162 (BLAKE3) Merkle root of the first `size`
/// window leaves of the log. The log only grows, so every new checkpoint must be larger than the
/// last one; anchoring a root that is already anchored changes nothing and emits nothing, which
/// makes a re-sent transaction (after a crash or a dropped transaction) harmless.
contract VitalAnchor {
    /// One anchored checkpoint: its size and the block that anchored it (0 = never anchored).
    struct Checkpoint {
        uint64 size;
        uint64 blockNumber;
    }

    /// The only account allowed to anchor (the vitalchain anchoring key).
    address public owner;
    /// Size of the largest checkpoint anchored so far (0 before the first one).
    uint64 public latestSize;
    /// Root of the largest checkpoint anchored so far.
    bytes32 public latestRoot;
    /// Every anchored root, with its size and block.
    mapping(bytes32 => Checkpoint) public checkpoints;

    event Anchored(bytes32 indexed root, uint64 size);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    /// The caller is not the anchoring account.
    error NotOwner(address caller);
    /// The log only grows: a checkpoint must be larger than the latest anchored one.
    error SizeNotGreater(uint64 size, uint64 latestSize);
    /// The root is already anchored, but with another size (cannot happen for honest input).
    error RootAnchoredWithOtherSize(bytes32 root, uint64 anchoredSize);
    /// The new owner would be the zero address (anchoring would be locked forever).
    error ZeroOwner();

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @notice Anchor the checkpoint (root, size). Same root and size again: no change.
    function anchor(bytes32 root, uint64 size) external onlyOwner {
        Checkpoint storage existing = checkpoints[root];
        if (existing.blockNumber != 0) {
            if (existing.size == size) return;
            revert RootAnchoredWithOtherSize(root, existing.size);
        }
        if (size <= latestSize) revert SizeNotGreater(size, latestSize);
        checkpoints[root] = Checkpoint(size, uint64(block.number));
        latestSize = size;
        latestRoot = root;
        emit Anchored(root, size);
    }

    /// @notice Hand anchoring over to another account (key rotation).
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroOwner();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}
